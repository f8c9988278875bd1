"""Test setup: 8 fake CPU devices, fast compiles, float32 everywhere.

XLA_FLAGS must be set before jax is imported, hence here, at collection time.
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
# One OpenBLAS thread per process (numpy's, scipy's): after each call its idle threads spin,
# taking the core the other pytest worker compiles on. `-m "not slow"`, warm, back to back:
# 160.2 s with OpenBLAS's default, 148.5 s with 1 (149.0 s in an earlier run).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
os.environ.setdefault(
  'BNJAX_CACHE', os.path.join(os.environ.get('TMPDIR', '/tmp'), 'bnjax-test-cache')
)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# Tiny models run fine without most XLA optimisations, and compile far faster.
jax.config.update('jax_disable_most_optimizations', True)
# Every program compiled here goes to the tests' persistent compilation cache, as do their
# subprocesses' (small_runs.JAX_TEST_CACHE): `-m "not slow"` took 162 s with it warm, 349 s
# with it empty (README, at 47f46e5). (An earlier version of the suite once aborted reading back the
# 8-device train chunk of test_end_to_end_on_mock_cifar10_over_8_devices; not seen again
# in 4 warm runs of the suite, 2 of them the whole of .ci/run, and 3 of that module.)
from small_runs import JAX_TEST_CACHE  # noqa: E402

for option, value in JAX_TEST_CACHE.items():
  jax.config.update(option, value)

import pathlib  # noqa: E402
import tarfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def tiny_image_tarball(tmp_path_factory) -> pathlib.Path:
  """A CIFAR-like tarball: train/<class>/*.png and test/<class>/*.png, 3 classes, 32x32."""
  from PIL import Image

  root = tmp_path_factory.mktemp('imgs')
  src = root / 'cifar-mini'
  rng = np.random.default_rng(0)
  for split, n in (('train', 40), ('test', 10)):
    for c, name in enumerate(('cat', 'airplane', 'bird')):
      d = src / split / name
      d.mkdir(parents=True)
      for i in range(n):
        # Class-dependent mean so that a model can learn something.
        im = np.clip(rng.normal(60 + 60 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(d / f'{i:04d}.png')
  tar = root / 'cifar-mini.tar.gz'
  with tarfile.open(tar, 'w:gz') as t:
    t.add(src, arcname='cifar-mini')
  return tar
