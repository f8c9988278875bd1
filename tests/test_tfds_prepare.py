"""A tfds dataset prepared for real (ArrayRecord files on disk), then trained from.

Needs TensorFlow, which preparing needs: the README's test command installs the
``prepare`` extra, so CI runs this; a machine without it skips it.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from test_train import ROOT, subprocess_env

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    importlib.util.find_spec('tensorflow') is None,
    reason='preparing a tfds dataset needs TensorFlow (the prepare extra)',
  ),
]


def test_a_fresh_host_prepares_a_tfds_dataset_then_any_run_reads_it(tmp_path):
  data_dir = tmp_path / 'tfds'
  script = pathlib.Path(__file__).parent / 'tfds_tiny.py'
  first = subprocess.run(
    [sys.executable, str(script), str(data_dir), str(tmp_path / 'first')],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'is not prepared under' in first.stderr  # it prepared the dataset itself
  assert list(data_dir.glob('tiny_cifar/1.0.0/*.array_record*'))

  # A plain bnjax.main (no builder code, no preparation) reads the prepared files through
  # tfds.data_source, the path configs/vgg_*.py use.
  second = subprocess.run(
    [
      sys.executable,
      '-m',
      'bnjax.main',
      f'--config={ROOT}/configs/vgg_bn.py:local',
      f'--workdir={tmp_path / "second"}',
      '--config.model=vgg_tiny',
      '--config.dataset=tfds:tiny_cifar',
      f'--config.data.tfds_data_dir={data_dir}',
      '--config.batch_size=16',
      '--config.eval_batch_size=16',
      '--config.num_steps=3',
      '--config.eval_every=0',
      '--config.checkpoint_every=0',
      '--config.probes.landscape.every=0',
      '--config.probes.ics.every=0',
      '--config.probes.activations.every=0',
    ],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'preparing' not in second.stderr
  status = json.loads((tmp_path / 'second' / 'status.json').read_text())
  assert status['state'] == 'done' and 0 <= status['eval_accuracy'] <= 1
