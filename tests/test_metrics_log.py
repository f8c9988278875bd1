"""The metrics log: lines written one call behind, divergence, probes that overflow."""

import json

import numpy as np

from bnjax import metrics_log, train, workdir
from small_runs import checkpoint_steps, metric_lines, small_dln, status, steps_in


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
  # Without normalisation this step size makes the DLN's loss overflow at step 16.
  config = small_dln(norm='none', learning_rate=2.8e-5, num_steps=200, checkpoint_every=5)
  assert train.train_and_evaluate(config, str(tmp_path)) == 'diverged'
  s = status(tmp_path)
  assert s['state'] == 'diverged'
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines[-1]['step'] == s['step']  # flushed up to the bad step
  assert not (lines[-1]['train_loss'] < float('inf'))  # NaN or inf
  assert s['last_finite_loss'] == lines[-2]['train_loss']
  assert steps_in(tmp_path) == list(range(s['step'] + 1))
  ckpts = checkpoint_steps(tmp_path)
  assert ckpts and max(ckpts) <= s['step'] and s['last_checkpoint'] == max(ckpts)


def test_a_probe_that_overflows_changes_nothing_and_is_counted(tmp_path):
  plain = small_dln()
  plain.probes.landscape.every = 0
  assert train.train_and_evaluate(plain, str(tmp_path / 'plain')) == 'done'
  config = small_dln()
  config.probes.landscape.step_size_multipliers = (1.0, 1e30)  # the second step overflows
  assert train.train_and_evaluate(config, str(tmp_path / 'probed')) == 'done'
  a, b = metric_lines(tmp_path / 'plain'), metric_lines(tmp_path / 'probed')
  assert [l.get('train_loss') for l in b] == [l.get('train_loss') for l in a]
  probed = [l for l in b if 'probe/landscape/loss' in l]
  assert probed and all(np.isfinite(l['probe/landscape/loss'][0]) for l in probed)
  assert all(not np.isfinite(l['probe/landscape/loss'][1]) for l in probed)
  counts = status(tmp_path / 'probed')['nonfinite_probe_values']
  assert counts['probe/landscape/loss'] == len(probed)


class _Due:
  def due(self, step):
    return step % 2 == 0


def test_each_call_is_written_when_the_next_is_submitted_and_the_last_on_flush(tmp_path):
  config = small_dln(log_every_seconds=0)
  log = metrics_log.MetricsLog(
    config, workdir.Workdir(tmp_path), {'p': _Due()}, first_line={'data/skipped_images': 2}
  )

  def call(losses):  # one call's metrics as the chunk returns them: [k] per field
    return (
      {'train_loss': np.asarray(losses, np.float32)},
      {'p': {'x': np.arange(len(losses), dtype=np.float32)}},
    )

  assert log.submit(0, call([3.0, 2.0]), {'eval_loss': 9.0}) is None
  assert not (tmp_path / 'metrics.jsonl').exists()  # held, one call behind
  assert log.submit(2, call([1.0, 0.5]), {}) is None
  assert steps_in(tmp_path) == [0, 1]
  assert log.flush() is None and steps_in(tmp_path) == [0, 1, 2, 3]
  lines = metric_lines(tmp_path)
  assert lines[0]['data/skipped_images'] == 2 and lines[0]['eval_loss'] == 9.0
  assert 'data/skipped_images' not in lines[2] and 'eval_loss' not in lines[1]
  assert [l.get('probe/p/x') for l in lines] == [0.0, None, 0.0, None]  # where due
  assert log.submit(4, call([0.25, float('nan'), 7.0]), {}) is None
  assert log.submit(7, call([1.0]), {}) == 5  # the bad step; nothing after it
  assert log.flush() == 5 and steps_in(tmp_path) == [0, 1, 2, 3, 4, 5]
  assert log.last_finite_loss == 0.25
