"""launch/tpu_vm.sh end to end against a stand-in gcloud (tests/fake_gcloud/gcloud).

The stand-in runs `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=CMD` as 2
local "workers" (a home each, fake CPU devices, jax.distributed through the environment)
and can lose its connection: SIGHUP to its ssh-like sessions, as sshd does. The workers'
"repository" is a git repo made from this working tree, so the drivers run this code.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from small_runs import AS_IN_A_TERMINAL, ROOT, metric_lines, status, subprocess_env
from small_runs import start as start_process

FAKE = ROOT / 'tests' / 'fake_gcloud'


@pytest.fixture(scope='module')
def remote(tmp_path_factory) -> pathlib.Path:
  """What the workers clone: this working tree's code, committed in a repo of its own."""
  repo = tmp_path_factory.mktemp('remote') / 'bnjax.git'
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for part in ('bnjax', 'launch', 'configs'):
    shutil.copytree(ROOT / part, repo / part, ignore=ignore)
  shutil.copy(ROOT / 'pyproject.toml', repo)
  git = ['git', '-c', 'user.name=test', '-c', 'user.email=test@example.com']
  for cmd in (['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', 'bnjax']):
    subprocess.run([*git, '-C', str(repo), *cmd], check=True)
  return repo


class Tpu:
  """A fake TPU VM slice in tmp_path and the launcher's command line against it."""

  def __init__(self, tmp_path, remote, num_steps=600, dataset=None, runs=('seed=0', 'seed=1')):
    self.tmp = tmp_path
    self.root = tmp_path / 'root'  # the sweep root: "a disk every worker shares"
    self.hosts = tmp_path / 'hosts'
    self.gcloud_log = tmp_path / 'gcloud.jsonl'
    self.network_down = tmp_path / 'network_down'
    self.sweep = tmp_path / 'tiny_sweep.py'
    self.sweep.write_text(TINY_SWEEP.format(num_steps=num_steps, dataset=dataset))
    self.runs = list(runs)
    env = subprocess_env()
    for name in ('XLA_FLAGS', 'JAX_PLATFORMS', 'PYTHONPATH'):  # the stand-in sets its own
      env.pop(name, None)
    self.env = dict(
      env,
      PATH=f'{FAKE}:{os.environ["PATH"]}',
      PYTHONPATH=str(ROOT),
      BNJAX_REPO=str(remote),
      FAKE_GCLOUD_HOSTS=str(self.hosts),
      FAKE_GCLOUD_LOG=str(self.gcloud_log),
      FAKE_GCLOUD_NETWORK_DOWN=str(self.network_down),
      FAKE_GCLOUD_PYTHON=sys.executable,
    )

  def args(self, *options):
    """The launcher's command line; --only= and --config. options go after ROOT."""
    tail = [o for o in options if o.startswith(('--only=', '--config.'))]
    head = [o for o in options if o not in tail]
    return [
      str(ROOT / 'launch' / 'tpu_vm.sh'),
      '--poll=1',
      *head,
      'fake-v4-16',
      'us-central2-b',
      str(self.sweep),
      str(self.root),
      *tail,
    ]

  # The launcher runs as from a terminal, SIGINT and SIGHUP at their defaults: a shell
  # started with a signal ignored (the suite under nohup) can never trap it.
  def run(self, *options, timeout=600, **env):
    return subprocess.run(
      [*AS_IN_A_TERMINAL, *self.args(*options)],
      env=dict(self.env, **env),
      capture_output=True,
      text=True,
      timeout=timeout,
    )

  def start(self, *options, **env):
    """The launcher in the background, in a process group of its own (for SIGHUP)."""
    log = open(self.tmp / f'launcher{time.time():.3f}.log', 'w+')
    proc = start_process(
      self.args(*options),
      env=dict(self.env, **env),
      stdout=log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    proc.log = log
    return proc

  def calls(self, *words) -> list[dict]:
    """The stand-in's log: ssh calls whose command has every word, and recorded calls."""
    if not self.gcloud_log.exists():
      return []
    lines = [json.loads(l) for l in self.gcloud_log.read_text().splitlines()]
    return [l for l in lines if all(w in l.get('command', '') for w in words)]

  def recorded(self, key) -> list[dict]:
    return [l for l in self.calls() if key in l]

  def drivers(self) -> list[int]:
    """pids of this test's drivers still running on the fake workers: a pid from a lock
    counts only if that process is a tpu_worker.sh driver of this test's ROOT (a pid read
    from a file is never signalled unchecked)."""
    pids = []
    for lock in self.hosts.glob('worker*/.bnjax-tpu-worker.lock'):
      words = lock.read_text().split()
      if len(words) < 3 or not words[2].isdigit() or int(words[2]) <= 1:
        continue
      try:
        cmdline = pathlib.Path(f'/proc/{words[2]}/cmdline').read_bytes().split(b'\0')
      except OSError:
        continue
      if b'_drive' in cmdline and f'--root={self.root}'.encode() in cmdline:
        pids.append(int(words[2]))
    return pids

  def steps(self, run) -> int:
    f = self.root / run / 'metrics.jsonl'
    return len(f.read_text().splitlines()) if f.exists() else 0

  def cleanup(self):
    """Ends what the tests started and left running: the drivers (a session each, with
    their runs) on the fake workers."""
    for pid in self.drivers():
      try:
        if os.getpgid(pid) == pid:  # the driver leads its own session: it and its run
          os.killpg(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


TINY_SWEEP = """
from bnjax import experiments, sweep


def get_sweep():
  if {dataset!r}:  # a run on a tfds dataset (these tests never train it)
    c = experiments.vgg('batch', 'local')
    c.dataset = {dataset!r}
    return c, sweep.axis('seed', [0, 1])
  c = experiments.dln('batch')
  c.model_kwargs.depth = 4
  c.num_steps = {num_steps}
  c.steps_per_call = 10
  c.checkpoint_every = 100
  for p in c.probes.values():
    p.every = 0
  return c, sweep.axis('seed', [0, 1])


get_config = sweep.config_getter(get_sweep)
"""


@pytest.fixture
def tpu(tmp_path, remote):
  made = []

  def make(**kwargs):
    made.append(Tpu(tmp_path, remote, **kwargs))
    return made[-1]

  yield make
  for t in made:
    t.cleanup()


def wait_for(predicate, what, timeout=300, proc=None):
  deadline = time.time() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      proc.log.seek(0)
      raise AssertionError(
        f'launcher ended (exit {proc.returncode}) before {what}:\n{proc.log.read()[-3000:]}'
      )
    assert time.time() < deadline, f'timed out waiting for {what}'
    time.sleep(0.2)


def output(proc) -> str:
  proc.log.seek(0)
  return proc.log.read()


def assert_every_run_done_with_every_step_once(t, num_steps):
  for run in t.runs:
    assert status(t.root / run)['state'] == 'done', run
    steps = [l['step'] for l in metric_lines(t.root / run)]
    assert steps == list(range(num_steps)), (run, steps[:5], len(steps))


def marked_done(t):
  for run in t.runs:
    (t.root / run).mkdir(parents=True)
    (t.root / run / 'status.json').write_text(json.dumps({'state': 'done', 'step': 600}))


# ------------------------------------------------------------------- fast: no training
def test_shared_data_dir_is_prepared_by_worker_0_alone_while_the_others_wait(tpu):
  t = tpu(dataset='mnist')
  marked_done(t)  # nothing to train: the set-up and the data are what this test is about
  out = t.run(TFDS_DATA_DIR=str(t.tmp / 'shared_tfds'))
  assert out.returncode == 0, out.stderr
  prepares = t.recorded('prepare')
  assert [(p['prepare'], p['worker']) for p in prepares] == [('mnist', 0)], prepares
  assert prepares[0]['data_dir'] == str(t.tmp / 'shared_tfds')
  worker1 = (t.root / '.tpu_vm' / 'worker1.log').read_text()
  assert 'waiting for worker 0 to prepare mnist' in worker1
  assert 'worker 0 prepared the data (status 0)' in worker1
  for k in (0, 1):  # then every run was found done and skipped, on every worker
    log = (t.root / '.tpu_vm' / f'worker{k}.log').read_text()
    assert 'seed=0: done already, skipped' in log and 'driver ends, status 0' in log
  assert len(t.calls('git clone')) == 1 and len(t.calls('tpu_worker.sh start')) == 1
  assert {p['worker'] for p in t.recorded('pip')} == {0, 1}  # the set-up ran on every worker


def test_per_worker_data_dirs_are_prepared_by_each_worker(tpu):
  t = tpu(dataset='mnist')
  marked_done(t)
  out = t.run('--per-worker-data-dir', TFDS_DATA_DIR='/mnt/local-ssd/tfds')
  assert out.returncode == 0, out.stderr
  assert sorted((p['prepare'], p['worker']) for p in t.recorded('prepare')) == [
    ('mnist', 0),
    ('mnist', 1),
  ]
  assert '--data-dir=per-worker' in t.calls('tpu_worker.sh start')[0]['command']


def test_a_finished_sweep_is_reported_without_starting_anything(tpu):
  t = tpu()
  marked_done(t)
  assert t.run().returncode == 0  # starts drivers that find every run done
  first_calls = len(t.calls())
  out = t.run()
  assert out.returncode == 0, out.stderr
  assert 'every run is finished already' in out.stderr
  assert len(t.calls()) == first_calls + 1  # one look at the workers, nothing started


class OtherDriver:
  """A driver of another sweep on a fake worker: a process of the test's own, in a
  session of its own, holds the worker's lock."""

  def __init__(self, t, worker):
    self.lock = t.hosts / f'worker{worker}' / '.bnjax-tpu-worker.lock'
    self.lock.parent.mkdir(parents=True, exist_ok=True)

  def __enter__(self):
    self.proc = subprocess.Popen(['flock', str(self.lock), 'sleep', '300'], start_new_session=True)
    self.lock.write_text(f'/mnt/shared/other_sweep\nsome-launch\n{self.proc.pid}\n')
    wait_for(
      lambda: subprocess.run(['flock', '-n', str(self.lock), 'true']).returncode != 0,
      'the lock to be held',
      timeout=10,
    )
    return self

  def __exit__(self, *exc):
    os.killpg(self.proc.pid, signal.SIGKILL)  # flock and its sleep, which holds the lock too
    self.proc.wait()


def test_a_worker_running_another_sweep_is_refused_before_anything_starts(tpu):
  t = tpu()
  marked_done(t)
  assert t.run().returncode == 0  # the workers have the clone now
  with OtherDriver(t, worker=1):
    out = t.run()
  assert out.returncode == 1
  assert 'worker 1 runs another sweep (root=/mnt/shared/other_sweep); stop it first' in out.stderr
  assert len(t.calls('git clone')) == 1 and len(t.calls('tpu_worker.sh start')) == 1


def test_a_start_that_fails_on_one_worker_stops_the_others(tpu):
  """Worker 1 cannot start (busy, and with no clone yet the first look cannot tell): the
  launcher stops worker 0's driver, which would wait for worker 1, and exits 1."""
  t = tpu(dataset='mnist')
  with OtherDriver(t, worker=1):
    out = t.run(TFDS_DATA_DIR=str(t.tmp / 'shared_tfds'))
  assert out.returncode == 1
  assert 'could not start on every worker; stopping those that started' in out.stderr
  assert len(t.calls('tpu_worker.sh stop')) == 1
  wait_for(lambda: not t.drivers(), "worker 0's driver to stop", timeout=60)
  assert (t.root / '.tpu_vm' / 'worker0.exit').read_text().split()[1] == '143'
  assert 'stop requested' in (t.root / '.tpu_vm' / 'worker0.log').read_text()


# ------------------------------------------------------------- slow: 2 workers training
@pytest.mark.slow
def test_runs_survive_a_closed_laptop_and_a_lost_network_and_a_rerun_attaches(tpu):
  num_steps = 600
  t = tpu(num_steps=num_steps)
  # --detach: set-up, start, return; the drivers go on without any connection
  t0 = time.time()
  out = t.run('--detach')
  assert out.returncode == 0, out.stderr
  assert 'detached: the runs go on' in out.stderr
  assert time.time() - t0 < 180  # set-up and start only: it does not wait for the runs
  assert len(t.drivers()) == 2
  assert len(t.calls('tpu_worker.sh start')) == 1

  # a later launcher follows them; then the laptop closes: SIGHUP to the launcher's
  # process group, the stand-in's ssh sessions get SIGHUP as from sshd
  follower = t.start()
  wait_for(lambda: 'attaching, nothing started' in output(follower), 'attaching', 120, follower)
  wait_for(lambda: t.steps('seed=0') > 30, 'seed=0 to be training', proc=follower)
  os.killpg(follower.pid, signal.SIGHUP)
  assert follower.wait(timeout=30) == 129
  assert 'stopped following; the runs go on' in output(follower)
  steps = t.steps('seed=0')
  wait_for(lambda: t.steps('seed=0') > steps + 20 or t.steps('seed=1'), 'the runs to go on', 120)
  assert len(t.drivers()) == 2

  # another follower; the network goes down: its ssh calls fail, it retries, gives up
  follower = t.start()
  wait_for(lambda: 'attaching, nothing started' in output(follower), 'attaching', 120, follower)
  assert len(t.drivers()) == 2, 'the runs ended before the second follower attached'
  t.network_down.touch()
  assert follower.wait(timeout=120) == 255
  assert 'stopped following; the runs go on on the workers; rerun' in output(follower)
  assert len(t.drivers()) == 2, 'the runs ended before the rerun could attach: make them longer'

  # the network is back: a rerun attaches (starts nothing), follows to the end, returns 0
  t.network_down.unlink()
  out = t.run()
  assert out.returncode == 0, out.stderr
  assert 'attaching, nothing started' in out.stderr
  assert len(t.calls('tpu_worker.sh start')) == 1 and len(t.calls('git clone')) == 1
  assert not t.drivers()
  assert_every_run_done_with_every_step_once(t, num_steps)
  for run in t.runs:  # a log per run and worker, each run started once on each
    for k in (0, 1):
      log = (t.root / run / 'logs' / f'worker{k}.log').read_text()
      assert log.count('=== ') == 1 and 'bnjax.main --multihost' in log
      assert (t.root / run / 'logs' / f'worker{k}.exit').read_text().split()[1] == '0'


@pytest.mark.slow
def test_stop_checkpoints_the_run_and_a_rerun_resumes_it(tpu):
  # --stop takes seconds to reach the run (launcher, ssh, driver), in which it trains a
  # few hundred of these steps (it stopped at 260-350 here, waited for past 120): 1,000
  # leave room. (Runs that once trained to the end despite the stop were orbax's
  # counter in JAX's preemption sync, mended.)
  num_steps = 1000
  t = tpu(num_steps=num_steps, runs=('seed=0',))
  follower = t.start('--only=seed=0')
  wait_for(lambda: t.steps('seed=0') > 120, 'seed=0 past a checkpoint', proc=follower)
  out = t.run('--stop', '--only=seed=0')
  assert out.returncode == 0, out.stderr
  ended = follower.wait(timeout=120)
  assert t.steps('seed=0') < num_steps, 'the run finished before --stop reached it'
  assert ended == 1  # the runs it followed ended unfinished
  assert not t.drivers()
  state = status(t.root / 'seed=0')
  assert state['state'] == 'preempted' and state['step'] < num_steps, state
  out = t.run('--only=seed=0')  # nothing runs: a new start, which resumes
  assert out.returncode == 0, out.stderr
  assert 'starting the drivers' in out.stderr
  assert len(t.calls('tpu_worker.sh start')) == 2
  assert_every_run_done_with_every_step_once(t, num_steps)
