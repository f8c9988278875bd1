"""Datasets -> per-host slices -> global sharded batches.

A dataset is held in host memory (every dataset the paper uses is small) as a
``Dataset`` of numpy arrays. Batches are a pure function of ``(seed, step)``:
epoch ``e`` visits the training set in the order ``permutation(seed, e)``, so a run
resumed at step ``s`` reads exactly the batches an uninterrupted run reads, and the
data iterator needs no checkpoint of its own.

Sources (``config.dataset``; ``bnjax.image_sources`` reads the images):
- a tfds name (``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``svhn_cropped``),
  read through ``tfds.data_source`` (ArrayRecord, no TensorFlow at training time);
- ``imagefolder:PATH``: a folder or tarball with ``train/<class>/*`` and
  ``test/<class>/*`` images (e.g. the offline CIFAR-10 JPEG tarball), decoded once and
  cached as ``.npz`` under ``config.data.cache_dir``;
- ``dln_gaussian``: the deep linear network's regression data, x ~ N(0, I),
  targets A x with A i.i.d. Gaussian, seeded.

Images are scaled to [0, 1] and standardised per channel with the training split's
mean and standard deviation (PAPER.md); no augmentation.
"""

import dataclasses
import functools
import os
import pathlib

import jax
import numpy as np

from bnjax import image_sources
from bnjax.image_sources import DataError  # raised here too; callers catch data.DataError
from bnjax.tfds_download import download_and_prepare

TFDS_DATASETS = ('cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'svhn_cropped')
SYNTHETIC_DATASETS = ('dln_gaussian',)
IMAGEFOLDER_PREFIX = 'imagefolder:'
TFDS_PREFIX = 'tfds:'  # tfds:NAME, any tfds dataset with 'image' and 'label' features


@dataclasses.dataclass(frozen=True)
class Split:
  inputs: np.ndarray  # [N, ...] float32, preprocessed
  targets: np.ndarray  # [N] int32 labels, or [N, d] float32 regression targets

  def __len__(self) -> int:
    return len(self.inputs)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  test: Split | None
  num_classes: int | None  # None for regression
  skipped_images: int = 0  # unreadable images left out (skip_unreadable_images)


def describe_datasets() -> str:
  return ', '.join(
    TFDS_DATASETS + SYNTHETIC_DATASETS + (IMAGEFOLDER_PREFIX + 'PATH', TFDS_PREFIX + 'NAME')
  )


def check_name(name: str) -> None:
  """Raises ValueError for an unknown dataset name or a missing local path."""
  if name.startswith(IMAGEFOLDER_PREFIX):
    path = pathlib.Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser()
    if not path.exists():
      raise ValueError(f'local dataset path {str(path)!r} does not exist')
    return
  if name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX):
    return
  if name not in TFDS_DATASETS + SYNTHETIC_DATASETS:
    raise ValueError(f'unknown dataset {name!r}; valid names: {describe_datasets()}')


def load(
  name: str,
  *,
  seed: int = 0,
  cache_dir: str = '',
  tfds_data_dir: str = '',
  dln_num_examples: int = 1000,
  dln_dim: int = 10,
  skip_unreadable_images: bool = False,
) -> Dataset:
  """Loads dataset ``name`` into host memory, preprocessed.

  An image folder with unreadable images raises DataError naming the first and counting
  the others, unless ``skip_unreadable_images``: then they are left out and counted.
  """
  check_name(name)
  if name == 'dln_gaussian':
    return dln_gaussian(seed, dln_num_examples, dln_dim)
  if name.startswith(IMAGEFOLDER_PREFIX):
    path = pathlib.Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser()
    raw = image_sources.load_imagefolder(
      path, pathlib.Path(cache_dir or image_sources.default_cache_dir()), skip_unreadable_images
    )
  else:
    raw = image_sources.load_tfds(name.removeprefix(TFDS_PREFIX), tfds_data_dir or None)
  return _standardise(raw)


def dln_gaussian(seed: int, num_examples: int = 1000, dim: int = 10) -> Dataset:
  """x ~ N(0, I_dim), targets A x with A [dim, dim] i.i.d. N(0, 1); train split only."""
  rng = np.random.default_rng([seed, 0xD1])
  x = rng.standard_normal((num_examples, dim)).astype(np.float32)
  a = rng.standard_normal((dim, dim)).astype(np.float32)
  return Dataset(train=Split(x, x @ a.T), test=None, num_classes=None)


# ---------------------------------------------------------------------- preprocessing
def _standardise(raw: image_sources.RawImages) -> Dataset:
  # float64 statistics: a float32 sum over 10^8 pixels loses digits.
  c = raw.train_images.shape[-1]
  pixels = raw.train_images.reshape(-1, c)
  mean = pixels.mean(0, dtype=np.float64) / 255.0
  std = np.sqrt((pixels.astype(np.float64) ** 2).mean(0) / 255.0**2 - mean**2)
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  shift = (mean / std).astype(np.float32)
  prep = lambda im: im.astype(np.float32) * scale - shift
  return Dataset(
    train=Split(prep(raw.train_images), raw.train_labels.astype(np.int32)),
    test=Split(prep(raw.test_images), raw.test_labels.astype(np.int32)),
    num_classes=raw.num_classes,
    skipped_images=raw.skipped,
  )


# ---------------------------------------------------------------------------- batches
@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Indices of the global batch of training step ``step``: [batch_size].

  Deterministic shuffling by seed, reshuffled every epoch, the remainder dropped.
  """
  if batch_size > num_examples:
    raise ValueError(f'batch size {batch_size} exceeds the {num_examples} training examples')
  per_epoch = num_examples // batch_size
  epoch, i = divmod(step, per_epoch)
  return _epoch_order(num_examples, seed, epoch)[i * batch_size : (i + 1) * batch_size]


def host_slice(global_batch_size: int) -> slice:
  """This host's contiguous share of a global batch."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f'batch size {global_batch_size} is not divisible by {n} hosts')
  per_host = global_batch_size // n
  return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)


def local_train_batches(
  split: Split, batch_size: int, seed: int, first_step: int, num_steps: int
) -> dict[str, np.ndarray]:
  """This host's slices of the batches of steps first_step .. first_step+num_steps-1.

  Returns {'inputs': [num_steps, batch_size / hosts, ...], 'targets': [...]}; only this
  host's examples are gathered.
  """
  own = host_slice(batch_size)
  idx = np.stack(
    [
      batch_indices(len(split), batch_size, seed, s)[own]
      for s in range(first_step, first_step + num_steps)
    ]
  )
  return {'inputs': split.inputs[idx], 'targets': split.targets[idx]}


def local_eval_batches(split: Split, batch_size: int):
  """Yields this host's slices of fixed-size evaluation batches covering ``split`` once.

  The last batch is padded; ``mask`` [batch/hosts] is 1 for real examples.
  """
  own = host_slice(batch_size)
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[own]
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    yield {'inputs': split.inputs[idx], 'targets': split.targets[idx], 'mask': mask}


# ---------------------------------------------------------------------- preparation
def prepare(name: str, data_dir: str | None = None) -> None:
  """Downloads tfds dataset ``name`` and writes it as ArrayRecord (what training reads).

  ``name``: one of TFDS_DATASETS, or any tfds name (``tfds:`` prefix optional). Needs
  TensorFlow (the ``prepare`` extra) and internet, once per data dir; a prepared dataset
  is left alone. Raises DataError with a one-line message otherwise.
  """
  name = name.removeprefix(TFDS_PREFIX)
  if not name or name in SYNTHETIC_DATASETS or name.startswith(IMAGEFOLDER_PREFIX):
    raise DataError(
      f'{name!r} is not a tfds dataset; tfds names: {", ".join(TFDS_DATASETS)}, '
      'or any other tfds name'
    )
  if not image_sources.tensorflow_available():
    raise DataError(
      f'preparing tfds dataset {name!r} needs TensorFlow: pip install -e ".[prepare]"'
    )
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # The format goes to the builder itself (tfds fixes it at the first construction).
  download_and_prepare(
    tfds.builder(name, data_dir=data_dir, file_format='array_record'), name, data_dir
  )


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
    prog='python -m bnjax.data', description='Prepare a tfds dataset (ArrayRecord) for training.'
  )
  parser.add_argument('command', choices=['prepare'])
  parser.add_argument('name', help=f'{", ".join(TFDS_DATASETS)} or any tfds name')
  parser.add_argument(
    '--data_dir',
    default=os.environ.get('TFDS_DATA_DIR'),
    help="default: $TFDS_DATA_DIR, else tfds' default",
  )
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up chatter
  if not sys.stderr.isatty() and image_sources.tensorflow_available():  # bars only for a terminal
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    tfds.disable_progress_bar()
  try:
    prepare(args.name, args.data_dir)
  except DataError as e:
    print(f'bnjax.data: {e}', file=sys.stderr)
    return 1
  print(f'{args.name} prepared under {args.data_dir or "the default TFDS data dir"}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
