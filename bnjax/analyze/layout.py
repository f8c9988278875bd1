"""Where analysis reads and writes, without JAX: workdirs, committed steps, the jsonl files.

Reads: ``config.json`` and the step directories of ``checkpoints/`` that hold orbax's
``COMMIT_MARKER`` (a directory without it is a save in progress or a save that died).
Writes: ``WORKDIR/analysis/NAME.jsonl`` and ``NAME.png`` only, each write whole and
atomic (a temporary file in ``analysis/``, then ``os.replace``). Never the workdir's
lock: a training may run beside an analysis.
"""

import json
import os
import pathlib
from typing import Any, Iterable

from bnjax import workdir as workdir_lib

# bnjax.checkpoints' names, not imported: it imports orbax and JAX, which readers (plots) skip.
CHECKPOINTS = 'checkpoints'
COMMIT_MARKER = 'commit_success.txt'

DIRECTORY = 'analysis'


def is_workdir(path: pathlib.Path) -> bool:
  return (path / workdir_lib.CONFIG_FILE).is_file()


def find_workdirs(paths: Iterable[str | pathlib.Path]) -> list[pathlib.Path]:
  """The workdirs of ``paths``: a workdir itself, or every workdir with checkpoints
  below a directory (a sweep root, any depth), sorted. Raises FileNotFoundError naming a
  path that is neither."""
  found = []
  for p in map(pathlib.Path, paths):
    if is_workdir(p):
      found.append(p)
      continue
    if not p.is_dir():
      raise FileNotFoundError(f'{p} does not exist')
    below = sorted(
      c.parent for c in p.rglob(workdir_lib.CONFIG_FILE) if (c.parent / CHECKPOINTS).is_dir()
    )
    if not below:
      raise FileNotFoundError(
        f'{p} is not a workdir (no {workdir_lib.CONFIG_FILE}) and holds '
        f'no workdir with {CHECKPOINTS}/'
      )
    found += below
  return sorted(set(found), key=str)


def read_config(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())


def committed_steps(workdir: str | pathlib.Path) -> list[int]:
  """Steps of the checkpoints that orbax committed (``COMMIT_MARKER`` present), ascending."""
  root = pathlib.Path(workdir) / CHECKPOINTS
  return sorted(
    int(m.parent.name) for m in root.glob(f'*/{COMMIT_MARKER}') if m.parent.name.isdigit()
  )


def output(workdir: pathlib.Path, name: str, suffix: str = '.jsonl') -> pathlib.Path:
  return workdir / DIRECTORY / f'{name}{suffix}'


def read_lines(path: pathlib.Path) -> list[dict]:
  """The JSON objects of a jsonl file, leaving out a line cut short (none if no file)."""
  if not path.exists():
    return []
  lines = []
  for text in path.read_text().splitlines():
    try:
      lines.append(json.loads(text))
    except ValueError:
      continue
  return lines


def write_atomically(path: pathlib.Path, write) -> None:
  """``write(tmp_path)`` then ``os.replace(tmp_path, path)``; a reader never sees half."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp{path.suffix}')
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def append_line(path: pathlib.Path, line: dict[str, Any]) -> None:
  """Adds ``line`` to the jsonl at ``path``, rewriting it whole and atomically.

  The file is read again just before: lines another analysis wrote meanwhile stay (a line
  of the same step and settings is replaced). Lines are kept sorted by step.
  """
  lines = [
    l
    for l in read_lines(path)
    if (l.get('step'), l.get('settings')) != (line['step'], line['settings'])
  ]
  lines = sorted(lines + [line], key=lambda l: l.get('step', -1))
  text = ''.join(json.dumps(l) + '\n' for l in lines)
  write_atomically(path, lambda tmp: tmp.write_text(text))
