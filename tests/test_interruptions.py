"""Runs stopped early and resumed: Ctrl-C, SIGTERM (preemption), SIGKILL, a host that dies."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from bnjax import interruptions, train, workdir
from small_runs import (
  ROOT,
  has_checkpoint,
  launcher_failure,
  main_args,
  metric_lines,
  small_dln,
  start,
  start_main,
  status,
  steps_in,
  subprocess_env,
  wait_for,
)


@pytest.mark.slow
def test_ctrl_c_checkpoints_says_interrupted_and_a_rerun_resumes(tmp_path):
  run = start(main_args(tmp_path))
  wait_for(has_checkpoint(tmp_path), run)
  run.send_signal(signal.SIGINT)
  _, err = run.communicate(timeout=120)
  assert run.returncode == interruptions.EXIT_INTERRUPTED, err[-3000:]
  assert 'Traceback' not in err
  s = status(tmp_path)
  assert s['state'] == 'interrupted' and (tmp_path / 'checkpoints' / str(s['step'])).exists()
  assert steps_in(tmp_path) == list(range(s['step']))

  resumed = start(main_args(tmp_path, num_steps=s['step'] + 50))
  _, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err[-3000:]
  assert status(tmp_path)['state'] == 'done'
  assert steps_in(tmp_path) == list(range(s['step'] + 50))


def test_a_second_ctrl_c_stops_at_once_and_status_does_not_say_running(tmp_path, monkeypatch):
  original, calls = workdir.Workdir.append_metrics, {'n': 0}

  def press_ctrl_c_twice(self, lines):
    calls['n'] += 1
    if calls['n'] == 2:
      os.kill(os.getpid(), signal.SIGINT)  # handled here: checkpoint and stop, when it can
      os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    return original(self, lines)

  def found(signum, frame):  # the handler the run finds: not SIG_IGN, whatever the suite
    raise AssertionError('the run left SIGINT to the handler it found')  # was started with

  monkeypatch.setattr(workdir.Workdir, 'append_metrics', press_ctrl_c_twice)
  previous = signal.signal(signal.SIGINT, found)
  try:
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(small_dln(), str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is found  # the handler found at start, restored
  finally:
    signal.signal(signal.SIGINT, previous)
  s = status(tmp_path)
  assert s['state'] == 'interrupted' and 'second Ctrl-C' in s['note']


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_a_run_starts_stops_it_before_its_first_step_with_a_checkpoint(
  tmp_path, signum
):
  """SIGHUP is a SIGTERM (preempted, 75); either, sent while bnjax.main still starts (here
  just after JAX's set-up, before the data and the compilation), is not lost."""
  run = start(main_args(tmp_path))
  for line in run.stderr:  # bnjax.main's log, line by line
    if 'JAX process 0/1' in line:
      break
  run.send_signal(signum)
  _, err = run.communicate(timeout=300)
  assert run.returncode == interruptions.EXIT_PREEMPTED, err[-3000:]
  s = status(tmp_path)
  assert (s['state'], s['step'], s['last_checkpoint'], s['signal']) == (
    'preempted',
    0,
    0,
    signal.Signals(signum).name,
  )
  assert (tmp_path / 'checkpoints' / '0').exists()
  assert not (tmp_path / 'metrics.jsonl').exists()  # no step trained


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_and_match_an_uninterrupted_run(tmp_path):
  """SIGKILL loses at most a checkpoint interval; SIGTERM saves and exits 'preempted';
  rerunning the same command resumes; the end matches an uninterrupted run exactly."""
  args = [
    f'--config={ROOT}/configs/dln_bn.py',
    '--config.norm=noisy_batch',
    '--config.model_kwargs.depth=8',
    '--config.probes.ics.layers=(2, 4)',
    '--config.num_steps=1000',  # SIGTERM comes at step 300: the run must not end first
    '--config.checkpoint_every=100',
    '--config.steps_per_call=20',
    '--config.probes.activations.every=0',
    '--config.probes.ics.every=150',
    '--config.probes.landscape.every=150',
  ]
  full = start_main(args, tmp_path / 'full')
  assert full.wait(timeout=600) == 0, full.stderr.read()
  run = tmp_path / 'interrupted'

  def start_and_wait_for_checkpoint(step):
    p = start_main(args, run)
    deadline = time.time() + 300
    while not (run / f'checkpoints/{step}').exists():
      assert p.poll() is None, 'finished before it could be interrupted: make the run longer'
      assert time.time() < deadline
      time.sleep(0.05)
    return p

  killed = start_and_wait_for_checkpoint(200)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert json.loads((run / 'status.json').read_text())['state'] == 'running'

  preempted = start_and_wait_for_checkpoint(300)
  preempted.send_signal(signal.SIGTERM)
  _, err = preempted.communicate(timeout=300)
  assert 'run done' not in err, 'finished before SIGTERM reached it: make the run longer'
  assert preempted.returncode == interruptions.EXIT_PREEMPTED, err
  assert 'resumed from checkpoint at step 200' in err
  status = json.loads((run / 'status.json').read_text())
  assert status['state'] == 'preempted' and (run / f'checkpoints/{status["step"]}').exists()

  resumed = start_main(args, run)
  _, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err
  assert f'resumed from checkpoint at step {status["step"]}' in err
  a, b = metric_lines(tmp_path / 'full'), metric_lines(run)
  assert [l['step'] for l in b] == list(range(1000))  # no duplicated, no missing steps
  for la, lb in zip(a, b):
    assert la['train_loss'] == lb['train_loss'], la['step']
    assert la.get('probe/landscape/beta') == lb.get('probe/landscape/beta')
    assert la.get('probe/ics/l2') == lb.get('probe/ics/l2')
  assert json.loads((run / 'status.json').read_text())['state'] == 'done'


@pytest.mark.slow
def test_when_a_host_dies_every_process_exits_in_bounded_time_and_a_rerun_resumes(tmp_path):
  # 2 hosts of 1 device each: a host's death is what is tested, and a small DLN trains
  # about 70 steps/s over 2 x 1 CPU devices here, 40 over 2 x 2 (gloo's collectives).
  launcher = [
    'bash',
    'launch/local_multihost.sh',
    '2',
    '1',
    *main_args(tmp_path / 'two')[3:],
    '--heartbeat_timeout_seconds=20',
  ]
  run = start(launcher, start_new_session=True)
  wait_for(has_checkpoint(tmp_path / 'two'), run)
  pid = int(
    subprocess.run(
      ['pgrep', '-f', f'process_id=1 .*--workdir={tmp_path / "two"}'],
      capture_output=True,
      text=True,
    ).stdout.split()[0]
  )
  killed_at = time.time()
  os.kill(pid, signal.SIGKILL)
  _, err = run.communicate(timeout=180)
  assert time.time() - killed_at < 120
  assert run.returncode != 0
  # The survivor's JAX runtime names the lost process (task 1) before exiting.
  assert re.search(r'unhealthy \(stopped sending heartbeats\):\s*1\b', err), err[-3000:]
  # status.json says 'failed' when the survivor sees the broken collective first, and
  # still 'running' when JAX's runtime aborts it first (an abort runs no Python code).
  assert status(tmp_path / 'two')['state'] in ('failed', 'running')

  rerun = subprocess.run(
    launcher[:4] + [a.replace('num_steps=3000', 'num_steps=300') for a in launcher[4:]],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert rerun.returncode == 0, launcher_failure(rerun.stderr)
  assert 'resumed from checkpoint' in rerun.stderr
  # Against the same two processes uninterrupted: the same reductions, so the same numbers
  # (one process over as many devices may sum in another order, as 1 x 4 against 2 x 2
  # did: its losses drifted from these by rounding).
  whole = subprocess.run(
    [*launcher[:4], *main_args(tmp_path / 'whole', num_steps=300)[3:]],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert whole.returncode == 0, launcher_failure(whole.stderr)
  a, b = metric_lines(tmp_path / 'whole'), metric_lines(tmp_path / 'two')
  assert [l['step'] for l in b] == list(range(300))
  assert [l['train_loss'] for l in b] == [l['train_loss'] for l in a]


def test_the_preemption_sync_sees_one_counter_per_process_the_loops_calls(tmp_path, monkeypatch):
  # JAX stops every host at the fastest one's last counter + 1: a second counter (orbax's
  # save passed its step) once set that point 1,010 steps after the SIGTERM, or past the end.
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  counters = []
  monkeypatch.setattr(
    multihost_utils, 'reached_preemption_sync_point', lambda c: counters.append(c) or False
  )
  config = small_dln(num_steps=20)  # checkpoints every 10 steps, 5 steps a call
  for probe in config.probes.values():
    probe.every = 0  # not what this is about, and compiled in seconds
  assert train.train_and_evaluate(config, str(tmp_path)) == 'done'
  assert counters and counters == list(range(len(counters))), counters


@pytest.mark.slow
def test_sigterm_to_one_host_stops_every_host_at_the_same_step_with_a_checkpoint(tmp_path):
  # A TPU preemption notice reaches one host; JAX's preemption sync stops them all together.
  workdir = tmp_path / 'two'
  launcher = ['bash', 'launch/local_multihost.sh', '2', '2', *main_args(workdir)[3:]]
  run = start(launcher, start_new_session=True)
  wait_for(has_checkpoint(workdir), run)
  pid = int(
    subprocess.run(
      ['pgrep', '-f', f'process_id=1 .*--workdir={workdir}'], capture_output=True, text=True
    ).stdout.split()[0]
  )
  logged_at_signal = len(steps_in(workdir))  # the log runs a call (10 steps) behind
  os.kill(pid, signal.SIGTERM)
  _, err = run.communicate(timeout=300)
  assert run.returncode == interruptions.EXIT_PREEMPTED, launcher_failure(err)
  assert err.count('SIGTERM (JAX preemption notice)') == 2, err[-3000:]
  state = status(workdir)
  assert state['state'] == 'preempted' and state['last_checkpoint'] == state['step'], state
  assert steps_in(workdir) == list(range(state['step']))
  # The sync takes milliseconds: the hosts stop within a few calls, not hundreds of steps on.
  assert logged_at_signal < state['step'] < logged_at_signal + 200, (logged_at_signal, state)
