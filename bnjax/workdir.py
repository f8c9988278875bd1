"""A run's directory and its files, as bnjax writes and reads them (no JAX here).

  config.json     the resolved config; ``check_workdir`` refuses a rerun of another config
  metrics.jsonl   one JSON object per step (see bnjax.train); ``read_metrics`` reads it
  events.out.tfevents.*  the same as TensorBoard events (see bnjax.tensorboard)
  lock.json       while the run lives: its pid, host and start time (one run per workdir)
  status.json     {"state": running | done | diverged | preempted | interrupted | failed,
                   "step", "updated", "pid", "host", "pid_start", ...}; while running,
                  rewritten at every checkpoint and every ``status_every_seconds``
  checkpoints/    see bnjax.checkpoints; ``latest_checkpoint`` reads it without JAX

Only one process (host 0 of a multi-host run) writes; every write of a whole file is
atomic (a temporary file, then ``os.replace``), so a reader never sees it half written.
"""

import contextlib
import json
import logging
import os
import pathlib
import socket
import time
from typing import Iterator

from bnjax import tensorboard

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
STATUS_FILE = 'status.json'
LOCK_FILE = 'lock.json'
# Fields a rerun may change without changing the run that the workdir holds.
RESUMABLE_FIELDS = (
  'num_steps',
  'log_every_seconds',
  'checkpoint_every',
  'eval_every',
  'max_checkpoints_to_keep',
  'eval_batch_size',
  'steps_per_call',
  'data.cache_dir',
  'data.tfds_data_dir',
  'tensorboard',
  'status_every_seconds',
  'compilation_cache',
)
CHECKPOINTS_DIR = 'checkpoints'  # as bnjax.checkpoints.DIRECTORY (which imports JAX)
COMMIT_MARKER = 'commit_success.txt'  # orbax's last write into a committed checkpoint


class WorkdirInUse(RuntimeError):
  """Another live process trains in this workdir; the message names it."""


class Workdir:
  """The files of one run. Only the writer (host 0) writes metrics, status and config."""

  def __init__(
    self, path: str | pathlib.Path, tensorboard_mode: str = 'off', is_writer: bool = True
  ):
    self.path = pathlib.Path(path)
    self.is_writer = is_writer
    self.tensorboard_mode = tensorboard_mode
    self.events = None  # TensorBoard writer, see open_events

  def write_text(self, name: str, text: str) -> None:
    """Writes file ``name`` whole (host 0 only). Atomic: a reader never sees it half
    written, such as another host checking config.json while a resumed run rewrites it."""
    if not self.is_writer:
      return
    tmp = self.path / f'.{name}.tmp'
    tmp.write_text(text)
    os.replace(tmp, self.path / name)

  def write_json(self, name: str, obj: dict) -> None:
    self.write_text(name, json.dumps(obj, indent=1, sort_keys=True) + '\n')

  def set_status(self, state: str, **fields) -> None:
    """Writes status.json whole: ``state``, ``fields``, when (``updated``) and by whom
    (``pid``, ``host``, ``pid_start``: see ``process_alive``)."""
    self.write_json(STATUS_FILE, dict(state=state, updated=time.time(), **this_process(), **fields))

  def set_final_status(self, state: str, **fields) -> None:
    """``set_status`` on the way out of a failed run: a write that fails (a full disk)
    is logged, never raised over the error that ended the run."""
    try:
      self.set_status(state, **fields)
    except OSError as e:
      logging.error('cannot write %s/%s (%s); it may still say running', self.path, STATUS_FILE, e)

  @contextlib.contextmanager
  def lock(self):
    """Holds ``lock.json`` (pid, host) while the run lives; only the writer takes it.

    Raises WorkdirInUse if a live process holds it. A lock left by a process that no
    longer runs on this host is taken over; one held from another host is obeyed (its
    liveness cannot be checked from here), and the message says how to clear it.
    """
    if not self.is_writer:
      yield
      return
    path = self.path / LOCK_FILE
    me = {**this_process(), 'since': time.time()}
    # Written whole, then linked into place: link fails if the lock exists, and a reader
    # never sees a half-written lock.
    tmp = self.path / f'.{LOCK_FILE}.{me["host"]}.{me["pid"]}'
    tmp.write_text(json.dumps(me))
    try:
      while not _link_or_take_over(tmp, path):
        pass
    finally:
      tmp.unlink(missing_ok=True)
    try:
      yield
    finally:
      if _read_json(path) == me:
        path.unlink(missing_ok=True)

  def truncate_metrics(self, from_step: int) -> None:
    """Drops metric lines of steps >= from_step (written after the checkpoint resumed)."""
    f = self.path / METRICS_FILE
    if not self.is_writer or not f.exists():
      return
    kept = [text for text, line in _metric_lines(f) if line.get('step', from_step) < from_step]
    tmp = self.path / f'.{METRICS_FILE}.tmp'
    tmp.write_text(''.join(l + '\n' for l in kept))
    os.replace(tmp, f)

  def append_metrics(self, lines: list[dict]) -> None:
    """Appends lines to metrics.jsonl (and to TensorBoard's events, if open)."""
    if not self.is_writer or not lines:
      return
    with open(self.path / METRICS_FILE, 'a') as f:
      f.write(''.join(json.dumps(l) + '\n' for l in lines))
      f.flush()
    if self.events is not None:
      self.events.write(lines)

  def open_events(self, first_step: int) -> None:
    """Starts TensorBoard events at first_step (hiding an earlier attempt's from there on)."""
    if self.is_writer and self.events is None:
      self.events = tensorboard.make_writer(self.path, self.tensorboard_mode, first_step)

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
      self.events = None


class Heartbeat:
  """status.json while a run trains: 'running' with its ``step`` and ``last_checkpoint``,
  rewritten at least every ``every`` seconds (checked between calls) and as soon as a
  checkpoint being saved is committed. ``python -m bnjax.status`` reads its ``updated``."""

  def __init__(self, wd: Workdir, every: float, step: int):
    self.wd, self.every = wd, every
    self.last_checkpoint = latest_checkpoint(wd.path)
    self._saving = None  # the step of the checkpoint being written, until committed
    self._written = 0.0
    self._write(step)

  def saving(self, step: int) -> None:
    """A checkpoint of ``step`` is being written (orbax commits it in the background)."""
    self._saving = step

  def update(self, step: int) -> None:
    """Rewrites status.json if a checkpoint was committed or ``every`` seconds passed."""
    committed = False
    if self._saving is not None:  # look until the newest checkpoint is committed
      latest = latest_checkpoint(self.wd.path)
      committed = latest != self.last_checkpoint
      self.last_checkpoint = latest
      if latest == self._saving:
        self._saving = None
    if committed or time.time() - self._written >= self.every:
      self._write(step)

  def _write(self, step: int) -> None:
    self.wd.set_status(
      'running', step=step, last_checkpoint=self.last_checkpoint, status_every_seconds=self.every
    )
    self._written = time.time()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The lines of ``workdir``'s metrics.jsonl, leaving out a line cut short by a kill."""
  return [line for _, line in _metric_lines(pathlib.Path(workdir) / METRICS_FILE)]


def _metric_lines(path: pathlib.Path) -> Iterator[tuple[str, dict]]:
  """(text, parsed) of every readable line of a metrics.jsonl."""
  for text in path.read_text().splitlines():
    try:
      line = json.loads(text)
    except ValueError:
      continue  # a line cut short by a kill
    yield text, line


def differing_fields(a: dict, b: dict, prefix: str = '') -> list[str]:
  """Dotted names of the fields where two (nested) config dicts differ."""
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, '<absent>'), b.get(k, '<absent>')
    if isinstance(va, dict) and isinstance(vb, dict):
      out += differing_fields(va, vb, f'{prefix}{k}.')
    elif va != vb:
      out.append(f'{prefix}{k}')
  return out


def check_workdir(workdir: str | pathlib.Path, config) -> None:
  """Refuses a workdir that holds a run of a different config (before any work).

  Raises config_lib.ConfigError naming the differing fields; a rerun may change only
  ``RESUMABLE_FIELDS``, and a field added to bnjax since the run started, left at its
  default, is no change.
  """
  # Imported here: config_lib imports JAX, which readers of metrics (plots, sweeps) skip.
  from bnjax import config_lib  # pylint: disable=g-import-not-at-top

  f = pathlib.Path(workdir) / CONFIG_FILE
  if not f.exists():
    return
  saved = json.loads(f.read_text())
  current = json.loads(config.to_json())
  defaults = json.loads(config_lib.base().to_json())
  differing = [
    k
    for k in differing_fields(saved, current)
    if k not in RESUMABLE_FIELDS and not _new_field_at_default(k, saved, current, defaults)
  ]
  if differing:
    raise config_lib.ConfigError(
      f'{workdir} holds a run of a different config (fields differ: {", ".join(differing)}); '
      'use another --workdir or the same config'
    )


def _new_field_at_default(field: str, saved: dict, current: dict, defaults: dict) -> bool:
  """A field added to bnjax after the run started, set to its default: not a change."""

  def get(d, keys):
    for key in keys:
      if not isinstance(d, dict) or key not in d:
        return '<absent>'
      d = d[key]
    return d

  keys = field.split('.')
  return get(saved, keys) == '<absent>' and get(current, keys) == get(defaults, keys) != '<absent>'


def _link_or_take_over(tmp: pathlib.Path, path: pathlib.Path) -> bool:
  """Links ``tmp`` to the lock ``path``; False after removing a dead holder's lock (try
  again). Raises WorkdirInUse if a live process holds it."""
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    pass
  holder = _read_json(path)
  if holder is not None and not _lock_holder_gone(holder):
    since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))
    raise WorkdirInUse(
      f'{path.parent} is in use by process {holder.get("pid")} on '
      f'{holder.get("host")} (since {since}); if that process is gone, delete {path}'
    )
  logging.warning('taking over %s from %s, which no longer runs', path, holder)
  path.unlink(missing_ok=True)
  return False


def _read_json(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _lock_holder_gone(holder: dict) -> bool:
  """Whether the process that wrote a lock no longer runs (only decidable on this host)."""
  return process_alive(holder) is False


def latest_checkpoint(workdir: str | pathlib.Path) -> int | None:
  """The newest committed checkpoint step in ``workdir`` (None if there is none)."""
  steps = [
    int(p.parent.name)
    for p in (pathlib.Path(workdir) / CHECKPOINTS_DIR).glob(f'*/{COMMIT_MARKER}')
    if p.parent.name.isdigit()
  ]
  return max(steps, default=None)


def read_status(workdir: str | pathlib.Path) -> dict:
  """``workdir``'s status.json ({} if there is none or it cannot be read)."""
  return _read_json(pathlib.Path(workdir) / STATUS_FILE) or {}


def read_lock(workdir: str | pathlib.Path) -> dict | None:
  """``workdir``'s lock.json: the live run's pid, host, start (None if there is none)."""
  return _read_json(pathlib.Path(workdir) / LOCK_FILE)


# ----------------------------------------------------------------- processes
def this_process() -> dict:
  """pid, host and ``pid_start`` (the kernel's start time of the pid, in clock ticks since
  boot), which tell this process apart from a later one that reuses its pid."""
  return {'pid': os.getpid(), 'host': socket.gethostname(), 'pid_start': _start_time(os.getpid())}


def _proc_stat(pid: int) -> list[str] | None:
  """/proc/PID/stat's fields after the command name (state first), None if unreadable."""
  try:
    return pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[-1].split()
  except OSError:
    return None


def _start_time(pid: int) -> int | None:
  fields = _proc_stat(pid)
  return int(fields[19]) if fields else None  # field 22 of proc(5): starttime


def process_alive(record: dict) -> bool | None:
  """Whether the process a record names (``pid``, ``host``, optional ``pid_start``) runs.

  None when that cannot be told from here (another host, or no pid). A zombie (killed,
  not yet reaped) and a live process with another start time (the pid reused) are gone.
  """
  if record.get('host') != socket.gethostname():
    return None
  try:
    pid = int(record['pid'])
  except (KeyError, ValueError, TypeError):
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: it exists
  fields = _proc_stat(pid)
  if fields is None:
    return True  # no /proc here: os.kill's answer stands
  if fields[0] == 'Z':
    return False
  return record.get('pid_start') in (None, int(fields[19]))
