r"""Sweeps: many runs of one experiment, each in its own workdir under a sweep root.

A sweep is a Python file, ``configs/sweeps/<name>.py``, with

  def get_sweep():
    return base_config, [overrides, ...]      # a ConfigDict and a list of dicts
  get_config = sweep.config_getter(get_sweep)  # makes the file a config file too

Overrides are flat dicts of dotted fields ({'norm': 'batch', 'probes.ics.every': 10}),
built with ``product`` and ``zip_`` from ``axis``, as big_vision's ``get_hyper`` does. A
run's name is its optional ``'name'`` entry, else made from its overrides; it is stable,
readable and the name of its workdir, ``ROOT/<name>``. Every run is one process,

  python -m bnjax.main --config=SWEEP_FILE:<name> --workdir=ROOT/<name> [extra flags]

so a run of a sweep is an ordinary run: the TPU VM and SLURM launchers (``launch/``)
start exactly these commands on every host.

  python -m bnjax.sweep configs/sweeps/paper_dln.py --root=DIR [--parallel=N]
      [--only=NAME,...] [--config.<field>=<value> ...] [--dry-run | --summary | --list]
      [--tfds-datasets]

Runs whose status.json says done or diverged are skipped, the others (never started,
killed, preempted, failed) start or resume; a failed run does not stop the others. At the
end (and with ``--summary`` alone) it writes ``DIR/summary.csv``, ``DIR/training.png``
and every paper figure the runs allow (``DIR/figures/``, as ``python -m bnjax.plots all``),
and prints the table (each run's state as ``python -m bnjax.status`` tells it): see
``bnjax.sweep_summary``. Every run's config is built and checked before any run starts.

Signals: SIGTERM, SIGINT (Ctrl-C) and SIGHUP to the runner are passed on to every run in
flight (each in its own session, so it hears them from the runner only); each checkpoints
and stops as bnjax.main does, no other run starts, and the runner waits for them and exits
128 + the signal (143, 130, 129). A run whose runner dies, even by SIGKILL, gets SIGTERM
from the kernel (``interruptions.die_with_parent``): no run outlives its runner.
Exit status: 0 when every run is done or diverged, 1 otherwise, 2 for a bad sweep.
"""

import argparse
import ast
import dataclasses
import importlib.util
import itertools
import json
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections

from bnjax import interruptions, sweep_summary, workdir
from bnjax import status as run_status

FINISHED = ('done', 'diverged')


# ----------------------------------------------------------------- building sweeps
class SweepError(ValueError):
  """A sweep that cannot run; the message names the run and the field."""


def axis(field: str, values: Sequence[Any]) -> list[dict]:
  """One field over several values: [{field: v} for v in values]."""
  return [{field: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
  """Every combination of the axes' entries (the first axis varies slowest)."""
  return [
    dict(itertools.chain.from_iterable(d.items() for d in combo))
    for combo in itertools.product(*axes)
  ]


def zip_(*axes: list[dict]) -> list[dict]:
  """The axes' entries side by side; every axis must have the same length."""
  if len({len(a) for a in axes}) > 1:
    raise SweepError(f'zip_ of axes of different lengths {[len(a) for a in axes]}')
  return [dict(itertools.chain.from_iterable(d.items() for d in combo)) for combo in zip(*axes)]


def run_name(overrides: dict) -> str:
  """The run's ``name`` entry, else 'field=value_...' from the last part of each field."""
  if 'name' in overrides:
    name = str(overrides['name'])
  else:
    name = (
      '_'.join(f'{k.split(".")[-1]}={sweep_summary.format_value(v)}' for k, v in overrides.items())
      or 'base'
    )
  if not re.fullmatch(r'[A-Za-z0-9._=+-]+', name):
    raise SweepError(f'run name {name!r} has characters a directory name should not have')
  return name


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, run: str) -> None:
  """Sets each dotted field; unknown fields and wrong types raise SweepError."""
  from bnjax import config_lib  # pylint: disable=g-import-not-at-top

  for field, value in overrides.items():
    if field == 'name':
      continue
    if message := config_lib.unknown_override(config, field):
      raise SweepError(f'run {run}: {message}')
    *parents, leaf = field.split('.')
    node = config
    for part in parents:
      node = node[part]
    try:
      node[leaf] = value
    except TypeError as e:
      raise SweepError(f'run {run}: field {field!r} cannot take {value!r} ({e})') from None


def config_getter(get_sweep: Callable) -> Callable:
  """get_config(arg) for a sweep file: the base config with run ``arg``'s overrides."""

  def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    base, runs = get_sweep()
    by_name = {run_name(o): o for o in runs}
    if arg not in by_name:
      raise SweepError(f'no run {arg!r} in this sweep; its runs: {", ".join(by_name)}')
    config = ml_collections.ConfigDict(base.to_dict())
    apply_overrides(config, by_name[arg], arg)
    return config

  return get_config


# ------------------------------------------------------------------ loading sweeps
@dataclasses.dataclass
class Run:
  name: str
  overrides: dict
  config: ml_collections.ConfigDict
  workdir: pathlib.Path


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load(
  sweep_file: str, root: str, extra_flags: Sequence[str] = (), only: Sequence[str] = ()
) -> list[Run]:
  """The sweep's runs, every config built and validated (SweepError before any run)."""
  from bnjax import config_lib  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(sweep_file)
  if not path.is_file():
    raise SweepError(f'no sweep file {sweep_file}')
  spec = importlib.util.spec_from_file_location(f'_sweep_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{sweep_file} has no get_sweep()')
  base, overrides = module.get_sweep()
  extra = {}
  for flag in extra_flags:
    m = re.fullmatch(r'--config\.([\w.]+)=(.*)', flag)
    if not m:
      raise SweepError(f'unknown flag {flag!r}; extra flags are --config.<field>=<value>')
    extra[m.group(1)] = _parse_value(m.group(2))
  runs, names = [], set()
  for o in overrides:
    name = run_name(o)
    if name in names:
      raise SweepError(f'two runs are named {name!r}; give them a "name" entry')
    names.add(name)
    config = ml_collections.ConfigDict(base.to_dict())
    apply_overrides(config, o, name)
    apply_overrides(config, extra, name)
    try:
      config_lib.validate(config, num_devices=1)
    except config_lib.ConfigError as e:
      raise SweepError(f'run {name}: {e}') from None
    runs.append(Run(name, o, config, pathlib.Path(root) / name))
  unknown = sorted(set(only) - names)
  if unknown:
    raise SweepError(f'--only names no run {unknown}; runs: {", ".join(sorted(names))}')
  return [r for r in runs if not only or r.name in only]


def command(sweep_file: str, run: Run, extra_flags: Sequence[str] = ()) -> list[str]:
  """The one process that trains (or resumes) ``run``."""
  return [
    sys.executable,
    '-m',
    'bnjax.main',
    f'--config={sweep_file}:{run.name}',
    f'--workdir={run.workdir}',
    *extra_flags,
  ]


# ------------------------------------------------------------------ running sweeps
def run_all(
  sweep_file: str, root: pathlib.Path, runs: list[Run], extra_flags: Sequence[str], parallel: int
) -> int | None:
  """Starts every unfinished run, ``parallel`` at a time, each logging to ROOT/logs/.

  Returns None when every run ended, or the first signal (SIGTERM, SIGINT, SIGHUP) that
  stopped the sweep: it was passed on to the runs in flight, which checkpoint and stop
  (a rerun resumes them), no other run started, and the runs were waited for. Runs that
  outlive the runner (killed with SIGKILL) get SIGTERM from the kernel (see
  ``interruptions.die_with_parent``).
  """
  commands = [(r, command(sweep_file, r, extra_flags)) for r in runs]
  with interruptions.Forwarder() as forwarder:
    _start_and_wait(root, commands, parallel, forwarder)
  return forwarder.received[0] if forwarder.received else None


def _start(root: pathlib.Path, run: Run, cmd: list[str], preexec) -> tuple[subprocess.Popen, Any]:
  """Starts ``cmd`` in its own session, logging to ROOT/logs/NAME.log."""
  log = open(root / 'logs' / f'{run.name}.log', 'a')
  log.write(f'\n$ {shlex.join(cmd)}\n')
  log.flush()
  proc = subprocess.Popen(
    cmd,
    stdin=subprocess.DEVNULL,
    stdout=log,
    stderr=subprocess.STDOUT,
    start_new_session=True,
    preexec_fn=preexec,
  )
  return proc, log


def _start_and_wait(
  root: pathlib.Path,
  commands: list[tuple[Run, list[str]]],
  parallel: int,
  forwarder: interruptions.Forwarder,
) -> None:
  """Runs the command of every unfinished run, ``parallel`` at a time, until every run
  ended or, after a signal, the runs in flight ended."""
  (root / 'logs').mkdir(parents=True, exist_ok=True)
  todo = []
  for r, cmd in commands:
    state = workdir.read_status(r.workdir).get('state')
    if state in FINISHED:
      print(f'[sweep] {r.name}: {state} already, skipped', flush=True)
    else:
      todo.append((r, cmd))
  preexec = interruptions.die_with_parent()
  running: list[tuple[Run, subprocess.Popen, float, Any]] = []
  started, total, announced = 0, len(todo), 0
  while (todo and not forwarder.received) or running:
    while todo and len(running) < parallel and not forwarder.received:
      r, cmd = todo.pop(0)
      started += 1
      proc, log = _start(root, r, cmd, preexec)
      print(f'[sweep] start {r.name} ({started} of {total}), log in {log.name}', flush=True)
      running.append((r, proc, time.time(), log))
    if len(forwarder.received) > announced:
      announced = len(forwarder.received)
      print(
        f'[sweep] {signal.Signals(forwarder.received[-1]).name}: passed on to the '
        f'{len(running)} runs in flight; waiting for them to checkpoint and stop; rerun '
        'to resume',
        flush=True,
      )
    forwarder.forward([proc for _, proc, _, _ in running])
    time.sleep(0.2)
    for item in list(running):
      if item[1].poll() is not None:
        running.remove(item)
        _record_end(root, *item)


def _record_end(root: pathlib.Path, r: Run, proc: subprocess.Popen, t0: float, log) -> None:
  """Closes a run's log, appends its exit and wall time to ROOT/logs/NAME.attempts.json."""
  log.close()
  wall = time.time() - t0
  f = sweep_summary.attempts_file(root, r.name)
  attempts = json.loads(f.read_text()) if f.exists() else []
  attempts.append({'exit': proc.returncode, 'seconds': wall})
  f.write_text(json.dumps(attempts) + '\n')
  state = workdir.read_status(r.workdir).get('state', 'no status')
  print(f'[sweep] {r.name}: {state} (exit {proc.returncode}) in {wall:.0f} s', flush=True)


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """The runner's flags, and the extra --config.<field>=<value> flags for every run."""
  parser = argparse.ArgumentParser(
    prog='python -m bnjax.sweep',
    description=__doc__.splitlines()[0],
    epilog='Extra --config.<field>=<value> flags apply to every run.',
  )
  parser.add_argument('sweep_file')
  parser.add_argument('--root', required=True, help='sweep root: one workdir per run')
  parser.add_argument('--parallel', type=int, default=1, help='runs at a time (default 1)')
  parser.add_argument('--only', default='', help='comma-separated run names')
  parser.add_argument('--dry-run', action='store_true', help='print the commands only')
  parser.add_argument('--list', action='store_true', help='print the run names only')
  parser.add_argument(
    '--tfds-datasets',
    action='store_true',
    help="print the tfds datasets the runs read (for launchers' set-up)",
  )
  parser.add_argument('--summary', action='store_true', help='only the summary of the runs')
  args, extra = parser.parse_known_args(argv)
  if args.parallel < 1:
    parser.error(f'--parallel must be >= 1, got {args.parallel}')
  return args, extra


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = _parse_args(argv)
  root = pathlib.Path(args.root)
  try:
    runs = load(args.sweep_file, args.root, extra, [n for n in args.only.split(',') if n])
  except SweepError as e:
    print(f'bnjax.sweep: {e}', file=sys.stderr)
    return 2
  if args.list:
    print('\n'.join(r.name for r in runs))
    return 0
  if args.tfds_datasets:
    from bnjax import data  # pylint: disable=g-import-not-at-top

    names = {r.config.dataset for r in runs}
    print(
      '\n'.join(
        sorted(
          {
            n.removeprefix(data.TFDS_PREFIX)
            for n in names
            if n in data.TFDS_DATASETS or n.startswith(data.TFDS_PREFIX)
          }
        )
      )
    )
    return 0
  if args.dry_run:
    print('\n'.join(shlex.join(command(args.sweep_file, r, extra)) for r in runs))
    return 0
  if not args.summary:
    signum = run_all(args.sweep_file, root, runs, extra, args.parallel)
    if signum is not None:
      return 128 + signum  # the shell's convention: 143 SIGTERM, 130 SIGINT, 129 SIGHUP
  rows = sweep_summary.write_summary(root, runs)
  return 0 if all(r['state'] in FINISHED for r in rows) else 1


if __name__ == '__main__':
  run_status.exit_with(main)
