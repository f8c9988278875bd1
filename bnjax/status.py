r"""Where runs stand, from what their workdirs hold (no JAX here).

  python -m bnjax.status DIR     # one run's workdir
  python -m bnjax.status ROOT    # every run under a sweep root (each subdirectory that
                                 # has a status.json or config.json)

prints one line per run: name, state, step (of a run that was running: status.json's, or
the last checkpoint if newer), last checkpoint (the newest committed one on disk), and
how long ago status.json was last written. The state is status.json's, except
for a run that it says is ``running``:

- on this host, ``running`` while the process named in status.json (else in lock.json)
  lives: the same pid with the same start time; ``stopped`` once it is gone (SIGKILL, a
  runtime abort, a reboot), whatever status.json still says;
- on another host (whose processes cannot be seen from here), ``running`` while
  status.json was updated within ``stale_after`` (three of the run's heartbeats,
  ``status_every_seconds``, and at least ``MIN_STALE_SECONDS``), else ``running?``.

``bnjax.sweep`` prints the same states in its summary (``run_status``).
"""

import dataclasses
import os
import pathlib
import sys
import time
from typing import Callable, NoReturn, Sequence

from bnjax import workdir as workdir_lib

MIN_STALE_SECONDS = 300.0
DEFAULT_HEARTBEAT_SECONDS = 60.0  # the config's default status_every_seconds


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """One run as ``python -m bnjax.status`` shows it."""

  name: str
  state: str  # status.json's state, 'stopped', 'running?' or 'not started'
  step: int | None
  last_checkpoint: int | None
  updated: float | None  # when status.json was written (seconds since the epoch)

  @property
  def age(self) -> float | None:
    return None if self.updated is None else max(time.time() - self.updated, 0.0)


def stale_after(status: dict) -> float:
  """Seconds without an update after which a run on another host shows as 'running?'."""
  every = status.get('status_every_seconds', DEFAULT_HEARTBEAT_SECONDS)
  return max(3 * every, MIN_STALE_SECONDS)


def run_status(workdir: str | pathlib.Path) -> RunStatus:
  """Where the run in ``workdir`` stands (see the module's docstring)."""
  workdir = pathlib.Path(workdir)
  status = workdir_lib.read_status(workdir)
  updated = status.get('updated', status.get('time'))
  state, step = status.get('state', 'not started'), status.get('step')
  checkpoint = workdir_lib.latest_checkpoint(workdir)
  if state == 'running':
    state = _running_or_not(workdir, status, updated)
    if checkpoint is not None and (step is None or checkpoint > step):
      step = checkpoint  # committed after the last heartbeat: the run got at least there
  return RunStatus(workdir.name, state, step, checkpoint, updated)


def _running_or_not(workdir: pathlib.Path, status: dict, updated: float | None) -> str:
  """'running', 'stopped' or 'running?' for a run whose status.json says running."""
  record = status if 'pid' in status else workdir_lib.read_lock(workdir)
  if record is None:  # no lock: its process ended (a live run holds lock.json)
    return 'stopped'
  alive = workdir_lib.process_alive(record)
  if alive is not None:
    return 'running' if alive else 'stopped'
  fresh = updated is not None and time.time() - updated <= stale_after(status)
  return 'running' if fresh else 'running?'


def format_age(seconds: float | None) -> str:
  """'12 s ago', '5 min ago', '3.2 h ago', '2.0 d ago'; '' when unknown."""
  if seconds is None:
    return ''
  for unit, size in (('d', 86400), ('h', 3600), ('min', 60)):
    if seconds >= 2 * size:
      return (
        f'{seconds / size:.1f} {unit} ago'
        if unit in ('h', 'd')
        else (f'{seconds / size:.0f} {unit} ago')
      )
  return f'{seconds:.0f} s ago'


def find_runs(path: str | pathlib.Path) -> list[pathlib.Path]:
  """``path`` if it is a run's workdir, else the runs' workdirs right under it (sorted)."""
  path = pathlib.Path(path)

  def is_run(p):
    return (p / workdir_lib.STATUS_FILE).exists() or (p / workdir_lib.CONFIG_FILE).exists()

  if is_run(path):
    return [path]
  return sorted(p for p in path.iterdir() if p.is_dir() and is_run(p)) if path.is_dir() else []


def table(statuses: Sequence[RunStatus]) -> list[str]:
  """The lines ``python -m bnjax.status`` prints: a header, then one per run."""
  rows = [('name', 'state', 'step', 'last_checkpoint', 'updated')]
  rows += [
    (
      s.name,
      s.state,
      '' if s.step is None else str(s.step),
      '' if s.last_checkpoint is None else str(s.last_checkpoint),
      format_age(s.age),
    )
    for s in statuses
  ]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return ['  '.join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def main(argv: Sequence[str]) -> int:
  if len(argv) != 1 or argv[0].startswith('-'):
    print(
      "usage: python -m bnjax.status DIR|ROOT  (a run's workdir or a sweep root)", file=sys.stderr
    )
    return 2
  runs = find_runs(argv[0])
  if not runs:
    print(
      f'bnjax.status: no run in {argv[0]} (no status.json or config.json there or in '
      'its subdirectories)',
      file=sys.stderr,
    )
    return 1
  print('\n'.join(table([run_status(r) for r in runs])))
  return 0


def exit_with(main_fn: Callable[[Sequence[str]], int]) -> NoReturn:
  """``sys.exit(main_fn(argv))``; a reader that stops early (``... | head``) ends it
  quietly, with status 1, as the Python docs recommend (no BrokenPipeError traceback)."""
  try:
    status = main_fn(sys.argv[1:])
    sys.stdout.flush()
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    status = 1
  sys.exit(status)


if __name__ == '__main__':
  exit_with(main)
