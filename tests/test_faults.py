"""Reliability, round two: the faults a researcher actually hits (one test per fault)."""

import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from bnjax import checkpoints, config_lib, data, interruptions, train, workdir
from test_reliability import small_dln, status, steps_in
from test_train import ROOT, subprocess_env


def metrics(workdir) -> list[dict]:
  return [json.loads(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def main_args(workdir, num_steps=3000, **overrides):
  """bnjax.main on a small DLN that runs long enough to be interrupted."""
  args = [f'--config={ROOT}/configs/dln_bn.py', f'--workdir={workdir}',
          '--config.model_kwargs.depth=4', f'--config.num_steps={num_steps}',
          '--config.steps_per_call=10', '--config.checkpoint_every=100',
          '--config.probes.ics.every=0', '--config.probes.activations.every=0',
          '--config.probes.landscape.every=0']
  return [sys.executable, '-m', 'bnjax.main', *args,
          *(f'--config.{k}={v}' for k, v in overrides.items())]


def start(args, devices=1, **kwargs):
  return subprocess.Popen(args, cwd=ROOT, env=subprocess_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, proc=None, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert proc is None or proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.1)


def launcher_failure(stderr: str) -> str:
  """A failed multi-process launch, readable: every process's error lines (the first
  process to fail is often not the last to print), then the tail."""
  errors = [l for l in stderr.splitlines() if re.search(r'Error|Traceback', l)]
  return '\n'.join(errors[:40]) + '\n...\n' + stderr[-3000:]


def has_checkpoint(workdir):
  return lambda: any(pathlib.Path(workdir).glob(f'checkpoints/*/{checkpoints.COMMIT_MARKER}'))


# 1 ------------------------------------------------------------------ two runs, one workdir
@pytest.mark.slow
def test_a_second_run_in_a_busy_workdir_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path):
  first = start(main_args(tmp_path))
  wait_for(has_checkpoint(tmp_path), first)
  second = start(main_args(tmp_path))
  _, err = second.communicate(timeout=120)
  assert second.returncode == 3
  assert err.strip().splitlines()[-1].startswith(
      f'bnjax: {tmp_path} is in use by process {first.pid} on ')
  first.send_signal(signal.SIGKILL)
  first.wait()
  end = max(int(p.parent.name) for p in tmp_path.glob(f'checkpoints/*/{checkpoints.COMMIT_MARKER}')) + 100
  third = start(main_args(tmp_path, num_steps=end))
  _, err = third.communicate(timeout=300)
  assert third.returncode == 0, err[-3000:]
  assert 'which no longer runs' in err and 'resumed from checkpoint' in err
  assert steps_in(tmp_path) == list(range(end))  # every step once
  assert not (tmp_path / workdir.LOCK_FILE).exists()  # released at the end


# 2 ------------------------------------------------------------------------------ Ctrl-C
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

  monkeypatch.setattr(workdir.Workdir, 'append_metrics', press_ctrl_c_twice)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(small_dln(), str(tmp_path))
  s = status(tmp_path)
  assert s['state'] == 'interrupted' and 'second Ctrl-C' in s['note']
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


# 3 ------------------------------------------------------------------------ damaged image
def test_an_unreadable_image_is_named_before_training_or_skipped_and_counted(tmp_path):
  from PIL import Image
  root = tmp_path / 'imgs'
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('test', 3)):
    for c in ('cat', 'dog'):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(root / split / c / f'{i}.jpg')
  for bad in (root / 'train' / 'dog' / '3.jpg', root / 'test' / 'cat' / '1.jpg'):
    bad.write_bytes(bad.read_bytes()[:100])  # truncated, as a half-copied file is
  cache = tmp_path / 'cache'
  with pytest.raises(data.DataError) as e:
    data.load(f'imagefolder:{root}', cache_dir=str(cache))
  message = str(e.value)
  assert '\n' not in message and '1 other image(s) unreadable too' in message
  assert ('train/dog/3.jpg' in message) != ('test/cat/1.jpg' in message)  # names the first
  assert 'skip_unreadable_images' in message
  ds = data.load(f'imagefolder:{root}', cache_dir=str(cache), skip_unreadable_images=True)
  assert ds.skipped_images == 2
  assert len(ds.train.inputs) == 11 and len(ds.test.inputs) == 5
  assert not list(cache.glob('*.npz'))  # never cached from a partial decode

  config = config_lib.vgg('batch')
  config.update(model='vgg_tiny', batch_size=8, eval_batch_size=8, num_steps=2, eval_every=0,
                checkpoint_every=0, dataset=f'imagefolder:{root}')
  for probe in config.probes.values():
    probe.every = 0
  config.data.cache_dir = str(cache)
  with pytest.raises(data.DataError, match='1 other image'):
    train.train_and_evaluate(config, str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused').exists()  # before any training
  config.data.skip_unreadable_images = True
  assert train.train_and_evaluate(config, str(tmp_path / 'run')) == 'done'
  lines = metrics(tmp_path / 'run')
  assert lines[0]['data/skipped_images'] == 2 and lines[0]['step'] == 0
  assert [l['step'] for l in lines] == [0, 1, 2]  # every step once (2: the final eval)


# 4 -------------------------------------------------------------------- misspelt override
@pytest.mark.parametrize('flag,message', [
    ('--config.no_such_field=1', "bnjax: config has no field 'no_such_field'; valid: batch_size, "),
    ('--config.probes.landscape.evry=5',
     "bnjax: config has no field 'probes.landscape.evry'; closest: probes.landscape.every"),
    ('--config.learnin_rate=0.1', "bnjax: config has no field 'learnin_rate'; closest: learning_rate"),
])
def test_a_misspelt_override_is_one_line_with_the_closest_names(tmp_path, flag, message):
  p = start([sys.executable, '-m', 'bnjax.main', f'--config={ROOT}/configs/dln_bn.py',
             f'--workdir={tmp_path / "w"}', flag])
  _, err = p.communicate(timeout=120)
  assert p.returncode == 2
  assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / 'w').exists()


# 5 ----------------------------------------------------------------------------- disk full
def _enospc(*_, **__):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize('where', ['metrics', 'checkpoint'])
def test_a_full_disk_fails_the_run_keeps_the_checkpoint_and_a_rerun_resumes(tmp_path, monkeypatch,
                                                                           where):
  full = tmp_path / 'full'
  assert train.train_and_evaluate(small_dln(), str(full)) == 'done'
  run = tmp_path / 'run'
  calls = {'n': 0}
  target = (workdir.Workdir, 'append_metrics') if where == 'metrics' else (ocp.CheckpointManager, 'save')
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
  a, b = metrics(full), metrics(run)
  assert [l['step'] for l in b] == [l['step'] for l in a]
  assert [l.get('train_loss') for l in b] == [l.get('train_loss') for l in a]


# 6 ------------------------------------------------------------------------ a host dies
@pytest.mark.slow
def test_when_a_host_dies_every_process_exits_in_bounded_time_and_a_rerun_resumes(tmp_path):
  launcher = ['bash', 'launch/local_multihost.sh', '2', '2', *main_args(tmp_path / 'two')[3:],
              '--heartbeat_timeout_seconds=20']
  run = start(launcher, start_new_session=True)
  wait_for(has_checkpoint(tmp_path / 'two'), run)
  pid = int(subprocess.run(['pgrep', '-f', f'process_id=1 .*--workdir={tmp_path / "two"}'],
                           capture_output=True, text=True).stdout.split()[0])
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

  rerun = subprocess.run(launcher[:4] + [a.replace('num_steps=3000', 'num_steps=500')
                                         for a in launcher[4:]],
                         cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, launcher_failure(rerun.stderr)
  assert 'resumed from checkpoint' in rerun.stderr
  # Against the same two processes uninterrupted: the same reductions, so the same numbers
  # (one process x 4 devices drifts from them by rounding over 500 steps of this DLN).
  whole = subprocess.run(['bash', 'launch/local_multihost.sh', '2', '2',
                          *main_args(tmp_path / 'whole', num_steps=500)[3:]],
                         cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert whole.returncode == 0, launcher_failure(whole.stderr)
  a, b = metrics(tmp_path / 'whole'), metrics(tmp_path / 'two')
  assert [l['step'] for l in b] == list(range(500))
  assert [l['train_loss'] for l in b] == [l['train_loss'] for l in a]


# 7 ------------------------------------------------------------- probes that fail numerically
def test_a_probe_that_overflows_changes_nothing_and_is_counted(tmp_path):
  plain = small_dln()
  plain.probes.landscape.every = 0
  assert train.train_and_evaluate(plain, str(tmp_path / 'plain')) == 'done'
  config = small_dln()
  config.probes.landscape.step_size_multipliers = (1.0, 1e30)  # the second step overflows
  assert train.train_and_evaluate(config, str(tmp_path / 'probed')) == 'done'
  a, b = metrics(tmp_path / 'plain'), metrics(tmp_path / 'probed')
  assert [l.get('train_loss') for l in b] == [l.get('train_loss') for l in a]
  probed = [l for l in b if 'probe/landscape/loss' in l]
  assert probed and all(np.isfinite(l['probe/landscape/loss'][0]) for l in probed)
  assert all(not np.isfinite(l['probe/landscape/loss'][1]) for l in probed)
  counts = status(tmp_path / 'probed')['nonfinite_probe_values']
  assert counts['probe/landscape/loss'] == len(probed)
