"""Small runs for the trainer's tests: configs, bnjax.main in a subprocess, what a workdir holds.

The readers here are strict (every metrics.jsonl line must parse), unlike
``bnjax.workdir.read_metrics``, which leaves out a line cut short by a kill.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

from bnjax import checkpoints, config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# JAX's persistent compilation cache of every program the tests compile, in the pytest
# processes (conftest.py) and in the bnjax.main runs they start (``subprocess_env``): a
# rerun of the suite reads most programs instead of compiling them. Entries are keyed by
# program, flags and versions; `rm -rf` the directory for a cold run. (No size cap:
# jax_compilation_cache_max_size needs the filelock package.) Every program is kept,
# however fast its compile. As jax.config options; the environment variables are their
# upper-case names.
JAX_TEST_CACHE = {
  'jax_compilation_cache_dir': os.path.join(tempfile.gettempdir(), 'bnjax-test-jax-cache'),
  'jax_persistent_cache_min_compile_time_secs': 0,
  'jax_persistent_cache_min_entry_size_bytes': 0,
}


def subprocess_env(devices_per_process: int = 1, optimised: bool = True) -> dict[str, str]:
  """The environment of a bnjax.main run in a subprocess (CPU, fake devices).

  The runs share JAX's persistent compilation cache (``JAX_TEST_CACHE``): a rerun of the
  same config (resume after kill, preemption) then skips most of its compile, as on a TPU
  VM with jax_compilation_cache_dir set. They are compiled as a user's are, optimised: a
  depth-8 DLN's 1,000 steps took 12-13 s unoptimised (``jax_disable_most_optimizations``,
  as the in-process tests run) and 2.5 s optimised, for 2 s more of compiling.
  ``optimised=False``: as the in-process tests, for scripts that compile many programs
  and run each once or twice (the probes').
  """
  return dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}',
    JAX_PLATFORMS='cpu',
    JAX_DISABLE_MOST_OPTIMIZATIONS=str(not optimised).lower(),
    PYTHON=sys.executable,
    **{option.upper(): str(value) for option, value in JAX_TEST_CACHE.items()},
  )


# ------------------------------------------------------------------------ configs
def small_dln(**overrides):
  """A 4-layer DLN, 40 steps, checkpoints every 10, every probe every 10 steps."""
  c = config_lib.dln('batch')
  c.model_kwargs.depth = 4
  c.num_steps = 40
  c.checkpoint_every = 10
  c.steps_per_call = 5
  c.probes.ics.layers = (2, 3)
  c.probes.activations.layers = (1, 2)
  for p in c.probes.values():
    p.every = 10
  c.update(overrides)
  return c


def main_args(workdir, num_steps=3000, config=f'{ROOT}/configs/dln_bn.py', **overrides):
  """bnjax.main on a small DLN that runs long enough to be interrupted (``config``: a
  DLN config file, with its probe schedule)."""
  args = [
    f'--config={config}',
    f'--workdir={workdir}',
    '--config.model_kwargs.depth=4',
    f'--config.num_steps={num_steps}',
    '--config.steps_per_call=10',
    '--config.checkpoint_every=100',
    '--config.probes.ics.every=0',
    '--config.probes.activations.every=0',
    '--config.probes.landscape.every=0',
  ]
  return [
    sys.executable,
    '-m',
    'bnjax.main',
    *args,
    *(f'--config.{k}={v}' for k, v in overrides.items()),
  ]


# ---------------------------------------------------------------------- processes
# Runs a command with SIGINT and SIGHUP at their defaults, as a command started from a
# terminal has them, whatever the suite was started with (a script's `pytest &` ignores
# SIGINT, `nohup` SIGHUP, and a process keeps the signals it was started ignoring). An exec
# in a new interpreter, not a preexec_fn: forking the multithreaded test process is unsafe.
AS_IN_A_TERMINAL = [
  sys.executable,
  '-c',
  'import os, signal, sys\n'
  'for s in (signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)\n'
  'os.execvp(sys.argv[1], sys.argv[1:])',
]


def start(args, devices=1, **kwargs):
  """``args`` in a subprocess (same pid as the returned Popen's) as from a terminal."""
  kwargs = {
    'env': subprocess_env(devices),
    'stdout': subprocess.PIPE,
    'stderr': subprocess.PIPE,
    'text': True,
    **kwargs,
  }
  return subprocess.Popen([*AS_IN_A_TERMINAL, *map(str, args)], cwd=ROOT, **kwargs)


def start_main(args, workdir, devices=1, **kwargs):
  """``python -m bnjax.main --workdir=workdir *args``."""
  return start(
    [sys.executable, '-m', 'bnjax.main', f'--workdir={workdir}', *args], devices, **kwargs
  )


def wait_for(predicate, proc=None, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert proc is None or proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.1)


def processes_of(path) -> list[int]:
  """The live processes whose command line names a file under ``path`` (a test's tmp_path:
  the processes that test started, never anyone else's). Zombies count as gone."""
  needle, pids = f'{path}/'.encode(), []
  for proc in pathlib.Path('/proc').iterdir():
    try:
      if (
        proc.name.isdigit()
        and needle in (proc / 'cmdline').read_bytes()
        and (proc / 'stat').read_text().rsplit(')', 1)[-1].split()[0] != 'Z'
      ):
        pids.append(int(proc.name))
    except OSError:  # gone meanwhile
      continue
  return pids


def kill_processes_of(path) -> None:
  """SIGKILL to what ``processes_of(path)`` finds: a test's clean-up, whatever it left."""
  for pid in processes_of(path):
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def launcher_failure(stderr: str) -> str:
  """A failed multi-process launch, readable: every process's error lines (the first
  process to fail is often not the last to print), then the tail."""
  errors = [l for l in stderr.splitlines() if re.search(r'Error|Traceback', l)]
  return '\n'.join(errors[:40]) + '\n...\n' + stderr[-3000:]


# --------------------------------------------------------------- what a workdir holds
def has_checkpoint(workdir):
  return lambda: any(pathlib.Path(workdir).glob(f'checkpoints/*/{checkpoints.COMMIT_MARKER}'))


def status(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / 'status.json').read_text())


def metric_lines(workdir) -> list[dict]:
  return [json.loads(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def steps_in(workdir) -> list[int]:
  return [l['step'] for l in metric_lines(workdir)]


def checkpoint_steps(workdir) -> list[int]:
  return sorted(
    int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir() if p.name.isdigit()
  )
