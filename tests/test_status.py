"""Where runs stand: status.json's heartbeat while a run trains, and ``python -m bnjax.status``
(also the sweep's summary) telling a live run from one whose process is gone."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bnjax import status as status_lib, train, workdir
from small_runs import (
  ROOT,
  has_checkpoint,
  kill_processes_of,
  main_args,
  metric_lines,
  small_dln,
  start,
  status,
  subprocess_env,
  wait_for,
)


def _fake_run(path, **status_fields):
  path.mkdir(parents=True)
  (path / 'status.json').write_text(json.dumps(status_fields))
  return path


def test_a_run_whose_process_is_gone_is_stopped_and_one_on_another_host_running_or_not(tmp_path):
  me = workdir.this_process()
  now = time.time()
  gone = subprocess.run(
    [sys.executable, '-c', 'import os; print(os.getpid())'],
    capture_output=True,
    text=True,
    check=True,
  )
  _fake_run(tmp_path / 'alive', state='running', step=7, updated=now - 3, **me)
  _fake_run(
    tmp_path / 'gone',
    state='running',
    step=5,
    updated=now,
    pid=int(gone.stdout),
    host=me['host'],
    pid_start=1,
  )
  # The pid is this process's, its start time another's: the pid was reused.
  _fake_run(
    tmp_path / 'reused',
    state='running',
    step=5,
    updated=now,
    **dict(me, pid_start=me['pid_start'] - 1),
  )
  _fake_run(
    tmp_path / 'far_fresh',
    state='running',
    step=9,
    updated=now - 100,
    pid=1,
    host='elsewhere',
    status_every_seconds=60,
  )
  _fake_run(
    tmp_path / 'far_stale',
    state='running',
    step=9,
    updated=now - 3600,
    pid=1,
    host='elsewhere',
    status_every_seconds=60,
  )
  # A status.json from before the heartbeat (no pid): lock.json tells, or its absence.
  _fake_run(tmp_path / 'old_unlocked', state='running', step=0, time=now - 60)
  old_locked = _fake_run(tmp_path / 'old_locked', state='running', step=0, time=now - 60)
  (old_locked / 'lock.json').write_text(json.dumps({'pid': os.getpid(), 'host': me['host']}))
  done = _fake_run(tmp_path / 'done', state='done', step=40, updated=now - 10, **me)
  (done / 'checkpoints' / '40').mkdir(parents=True)
  (done / 'checkpoints' / '40' / 'commit_success.txt').touch()
  (done / 'checkpoints' / '50').mkdir()  # never committed
  (tmp_path / 'not_a_run').mkdir()

  got = {s.name: s for s in map(status_lib.run_status, status_lib.find_runs(tmp_path))}
  assert {n: s.state for n, s in got.items()} == {
    'alive': 'running',
    'gone': 'stopped',
    'reused': 'stopped',
    'far_fresh': 'running',
    'far_stale': 'running?',
    'old_unlocked': 'stopped',
    'old_locked': 'running',
    'done': 'done',
  }
  assert (got['done'].step, got['done'].last_checkpoint) == (40, 40)
  assert got['alive'].age == pytest.approx(3, abs=2)
  lines = status_lib.table(got.values())
  assert lines[0].split() == ['name', 'state', 'step', 'last_checkpoint', 'updated']
  assert ['done', 'done', '40', '40', '10', 's', 'ago'] in [l.split() for l in lines]
  assert status_lib.format_age(7200) == '2.0 h ago' and status_lib.format_age(300) == '5 min ago'


def test_a_reader_that_stops_early_ends_the_table_without_a_traceback(tmp_path):
  for k in range(3000):  # more than a pipe's buffer
    _fake_run(tmp_path / f'run{k:04d}', state='done', step=k, updated=time.time())
  proc = subprocess.Popen(
    [sys.executable, '-m', 'bnjax.status', str(tmp_path)],
    cwd=ROOT,
    env=subprocess_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  assert proc.stdout.readline().split()[0] == b'name'
  proc.stdout.close()  # as `| head -1` does
  assert proc.wait(timeout=120) == 1
  assert proc.stderr.read() == b''


def test_status_json_gives_the_step_while_a_run_trains(tmp_path, monkeypatch):
  seen, original = [], workdir.Workdir.append_metrics

  def record_status(self, lines):
    seen.append(status(tmp_path))
    return original(self, lines)

  monkeypatch.setattr(workdir.Workdir, 'append_metrics', record_status)
  assert train.train_and_evaluate(small_dln(status_every_seconds=1e-6), str(tmp_path)) == 'done'
  assert all(s['state'] == 'running' for s in seen)
  assert all(s['pid'] == os.getpid() and s['host'] == socket.gethostname() for s in seen)
  steps = [s['step'] for s in seen]
  assert steps == sorted(steps) and steps[-1] >= 30  # it moves with the run
  # A checkpoint appears in status.json once committed (here every 10 steps; orbax commits
  # one before it starts the next).
  assert {s['last_checkpoint'] for s in seen} >= {10, 20}
  assert all(s['last_checkpoint'] is None or s['last_checkpoint'] <= s['step'] for s in seen)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_shows_as_stopped_with_its_step_and_checkpoint(tmp_path):
  run = start(main_args(tmp_path, num_steps=10**6, status_every_seconds=0.5))  # killed below
  try:
    wait_for(lambda: has_checkpoint(tmp_path)() and status(tmp_path).get('last_checkpoint'), run)
    shown = subprocess.run(
      [sys.executable, '-m', 'bnjax.status', str(tmp_path)],
      cwd=ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      check=True,
    )
    assert shown.stdout.splitlines()[1].split()[1] == 'running'
    run.send_signal(signal.SIGKILL)
    run.wait()
  finally:
    kill_processes_of(tmp_path)
  s = status(tmp_path)
  assert s['state'] == 'running'  # what a SIGKILL leaves: status.json cannot say otherwise
  checkpoint = workdir.latest_checkpoint(tmp_path)
  shown = subprocess.run(
    [sys.executable, '-m', 'bnjax.status', str(tmp_path)],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    check=True,
  )
  name, state, step, last_checkpoint, *age = shown.stdout.splitlines()[1].split()
  # The step: the heartbeat's, or the checkpoint committed after it.
  assert (name, state, int(step), int(last_checkpoint)) == (
    tmp_path.name,
    'stopped',
    max(s['step'], checkpoint),
    checkpoint,
  )
  assert ' '.join(age).endswith('s ago')
  # The heartbeat: consistent, behind the run by at most half a second or a few calls.
  assert s['last_checkpoint'] <= s['step'] and s['last_checkpoint'] in (
    checkpoint,
    checkpoint - 100,
  )
  assert checkpoint <= len(metric_lines(tmp_path)) and s['step'] <= len(metric_lines(tmp_path)) + 20
