"""The run directory: one run per workdir (lock.json), status.json however a run ends,
config.json and resuming under a changed config, metrics.jsonl read back."""

import errno
import json
import os
import signal
import threading

import orbax.checkpoint as ocp
import pytest

from bnjax import checkpoints, config_lib, train, workdir
from small_runs import (
  has_checkpoint,
  main_args,
  metric_lines,
  small_dln,
  start,
  status,
  steps_in,
  wait_for,
)


@pytest.mark.slow
def test_a_second_run_in_a_busy_workdir_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path):
  # The first run must outlast the second's start-up (seconds: thousands of these steps),
  # so it is given more steps than it ever trains; it is killed below.
  first = start(main_args(tmp_path, num_steps=10**6))
  try:
    wait_for(has_checkpoint(tmp_path), first)
    second = start(main_args(tmp_path))
    _, err = second.communicate(timeout=120)
    assert first.poll() is None, 'the first run ended before the second looked at the lock'
    assert second.returncode == 3, err[-3000:]
    assert (
      err.strip()
      .splitlines()[-1]
      .startswith(f'bnjax: {tmp_path} is in use by process {first.pid} on ')
    )
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  end = (
    max(int(p.parent.name) for p in tmp_path.glob(f'checkpoints/*/{checkpoints.COMMIT_MARKER}'))
    + 100
  )
  third = start(main_args(tmp_path, num_steps=end))
  _, err = third.communicate(timeout=300)
  assert third.returncode == 0, err[-3000:]
  assert 'which no longer runs' in err and 'resumed from checkpoint' in err
  assert steps_in(tmp_path) == list(range(end))  # every step once
  assert not (tmp_path / workdir.LOCK_FILE).exists()  # released at the end


def _enospc(*_, **__):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize('where', ['metrics', 'checkpoint'])
def test_a_full_disk_fails_the_run_keeps_the_checkpoint_and_a_rerun_resumes(
  tmp_path, monkeypatch, where
):
  full = tmp_path / 'full'
  assert train.train_and_evaluate(small_dln(), str(full)) == 'done'
  run = tmp_path / 'run'
  calls = {'n': 0}
  target = (
    (workdir.Workdir, 'append_metrics') if where == 'metrics' else (ocp.CheckpointManager, 'save')
  )
  original = getattr(*target)

  def fail_later(self, *args, **kwargs):
    calls['n'] += 1
    if calls['n'] == 3:  # after two good calls: a checkpoint exists
      _enospc()
    return original(self, *args, **kwargs)

  monkeypatch.setattr(*target, fail_later)
  with pytest.raises(OSError) as e:
    train.train_and_evaluate(small_dln(), str(run))
  assert e.value.errno == errno.ENOSPC
  s = status(run)
  assert s['state'] == 'failed' and 'No space left on device' in s['error']
  assert s['last_checkpoint'] is not None
  assert not (run / workdir.LOCK_FILE).exists()
  monkeypatch.setattr(*target, original)  # space is back
  assert train.train_and_evaluate(small_dln(), str(run)) == 'done'
  a, b = metric_lines(full), metric_lines(run)
  assert [l['step'] for l in b] == [l['step'] for l in a]
  assert [l.get('train_loss') for l in b] == [l.get('train_loss') for l in a]


def test_workdir_of_another_config_is_refused_naming_the_fields(tmp_path):
  train.train_and_evaluate(small_dln(num_steps=5), str(tmp_path))
  before = (tmp_path / 'metrics.jsonl').read_text()
  with pytest.raises(config_lib.ConfigError, match=r'fields differ: learning_rate, norm\)'):
    train.train_and_evaluate(small_dln(num_steps=5, learning_rate=1e-5, norm='lp1'), str(tmp_path))
  assert (tmp_path / 'metrics.jsonl').read_text() == before


def test_other_hosts_never_read_a_half_written_config_json(tmp_path):
  # In a multi-host resume, process 0 rewrites config.json while the others check it
  # (check_workdir). A reader that caught it half written died, and process 0 then timed
  # out in its first collective. Here a reader thread checks it while it is rewritten.
  config = small_dln()
  text = config.to_json(indent=1) + '\n'
  wd = workdir.Workdir(str(tmp_path))
  wd.write_text('config.json', text)
  stop, errors = threading.Event(), []

  def check_until_stopped():
    while not stop.is_set():
      try:
        workdir.check_workdir(str(tmp_path), config)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)

  reader = threading.Thread(target=check_until_stopped)
  reader.start()
  for _ in range(2000):
    wd.write_text('config.json', text)
  stop.set()
  reader.join()
  assert not errors, errors[:3]


def test_a_workdir_from_before_a_new_config_field_still_resumes(tmp_path):
  """A field bnjax added since the run started, at its default, is not a config change."""
  assert train.train_and_evaluate(small_dln(num_steps=20), str(tmp_path)) == 'done'
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['data']['skip_unreadable_images']  # as a workdir written before the field
  del saved['compilation_cache'], saved['status_every_seconds']  # before issue 25
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert train.train_and_evaluate(small_dln(num_steps=30), str(tmp_path)) == 'done'
  assert steps_in(tmp_path) == list(range(30))
  # A rerun may move the compilation cache or change the heartbeat.
  assert (
    train.train_and_evaluate(
      small_dln(num_steps=35, compilation_cache='off', status_every_seconds=5.0), str(tmp_path)
    )
    == 'done'
  )
  with pytest.raises(config_lib.ConfigError, match='data.skip_unreadable_images'):
    train.train_and_evaluate(
      small_dln(num_steps=40, data={'skip_unreadable_images': True}), str(tmp_path)
    )


def test_metrics_are_read_without_a_line_cut_short_and_truncated_from_a_step(tmp_path):
  wd = workdir.Workdir(tmp_path)
  wd.append_metrics([{'step': t, 'train_loss': 1.0 / (t + 1)} for t in range(5)])
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "train_lo')  # a kill in the middle of a write
  assert [l['step'] for l in workdir.read_metrics(tmp_path)] == [0, 1, 2, 3, 4]
  before = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  wd.truncate_metrics(3)  # a resume from the checkpoint of step 3
  assert (tmp_path / 'metrics.jsonl').read_text().splitlines() == before[:3]
  wd.append_metrics([{'step': 3, 'train_loss': 0.5}])
  assert steps_in(tmp_path) == [0, 1, 2, 3]
