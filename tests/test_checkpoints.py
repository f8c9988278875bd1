"""Checkpoints and resuming from them: a damaged newest checkpoint, none readable."""

import logging
import pathlib

import pytest

from bnjax import train
from small_runs import checkpoint_steps, small_dln, status, steps_in


def _damage_latest(workdir, how):
  latest = pathlib.Path(workdir) / 'checkpoints' / str(max(checkpoint_steps(workdir)))
  if how == 'truncated':
    for f in latest.rglob('*'):
      if f.is_file() and f.parent.name == 'd':
        f.write_bytes(f.read_bytes()[:10])
  else:
    for f in latest.rglob('commit_success.txt'):
      f.unlink()


@pytest.mark.parametrize('how', ['truncated', 'uncommitted'])
def test_damaged_latest_checkpoint_falls_back_to_an_intact_one(tmp_path, how, caplog):
  caplog.set_level(logging.INFO)
  config = small_dln(num_steps=20)
  assert train.train_and_evaluate(config, str(tmp_path)) == 'done'
  assert checkpoint_steps(tmp_path) == [10, 20]
  _damage_latest(tmp_path, how)
  config.num_steps = 30  # a rerun may extend a run
  assert train.train_and_evaluate(config, str(tmp_path)) == 'done'
  assert (
    'checkpoint at step 20' in caplog.text and 'resumed from checkpoint at step 10' in caplog.text
  )
  assert steps_in(tmp_path) == list(range(30))


def test_unreadable_checkpoints_stop_the_run_instead_of_restarting(tmp_path):
  config = small_dln(num_steps=10, max_checkpoints_to_keep=1)
  train.train_and_evaluate(config, str(tmp_path))
  _damage_latest(tmp_path, 'truncated')
  with pytest.raises(RuntimeError, match='none can be read'):
    train.train_and_evaluate(config, str(tmp_path))
  assert status(tmp_path)['state'] == 'failed'
