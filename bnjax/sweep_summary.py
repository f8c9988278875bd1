"""A sweep's summary: one row per run (state, steps, final metrics, wall time), printed,
written to ``ROOT/summary.csv``, with ``ROOT/training.png`` and the paper figures the runs
allow (``ROOT/figures/``). Also the two things the runner and the summary share: a value as
run names and the table write it, and each run's attempts file."""

import csv
import json
import pathlib
from typing import TYPE_CHECKING, Any

from bnjax import status as run_status, workdir

if TYPE_CHECKING:
  from bnjax import sweep

SUMMARY_METRICS = ('train_loss', 'train_accuracy', 'eval_loss', 'eval_accuracy')


def format_value(v: Any) -> str:
  """An override's value as run names and the summary write it: 0.1, batch, 64+64."""
  if isinstance(v, (tuple, list)):
    return '+'.join(format_value(x) for x in v)
  return f'{v:g}' if isinstance(v, float) else str(v)


def attempts_file(root: pathlib.Path, name: str) -> pathlib.Path:
  """ROOT/logs/NAME.attempts.json: [{'exit', 'seconds'}], one per start of run NAME."""
  return root / 'logs' / f'{name}.attempts.json'


def summarize(root: pathlib.Path, runs: list['sweep.Run']) -> list[dict]:
  """One row per run: name, overrides, state (as ``bnjax.status`` tells it), steps, last
  checkpoint, last status update, final metrics, wall time (s)."""
  rows = []
  for r in runs:
    status = run_status.run_status(r.workdir)
    overrides = ' '.join(f'{k}={format_value(v)}' for k, v in r.overrides.items() if k != 'name')
    row = {
      'name': r.name,
      'overrides': overrides,
      'state': status.state,
      'steps': '' if status.step is None else status.step,
      'last_checkpoint': '' if status.last_checkpoint is None else status.last_checkpoint,
      'updated': run_status.format_age(status.age),
    }
    last = {}
    if (r.workdir / workdir.METRICS_FILE).exists():
      for line in workdir.read_metrics(r.workdir):
        last.update({k: v for k, v in line.items() if k in SUMMARY_METRICS})
    row.update({k: f'{last[k]:.4g}' if k in last else '' for k in SUMMARY_METRICS})
    f = attempts_file(root, r.name)
    row['wall_seconds'] = (
      f'{sum(a["seconds"] for a in json.loads(f.read_text())):.0f}' if f.exists() else ''
    )
    rows.append(row)
  return rows


def write_summary(root: pathlib.Path, runs: list['sweep.Run']) -> list[dict]:
  """Prints the table, writes ROOT/summary.csv and ROOT/training.png."""
  from bnjax import plots  # pylint: disable=g-import-not-at-top

  rows = summarize(root, runs)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / 'summary.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0] if k != 'overrides'}
  print('  '.join(k.ljust(w) for k, w in widths.items()))
  for r in rows:
    print('  '.join(str(r[k]).ljust(w) for k, w in widths.items()))
  started = [r.workdir for r in runs if (r.workdir / workdir.METRICS_FILE).exists()]
  if started:
    plots.draw_sweep_training(started, root / 'training.png')
    drawn = plots.draw_all([plots.load_run(w) for w in started], root / 'figures')
    print(
      f'[sweep] paper figures in {root / "figures"}: '
      f'{", ".join(n for n, what in drawn.items() if what == "drawn") or "none"}'
    )
  print(f'[sweep] summary in {root / "summary.csv"}, curves in {root / "training.png"}')
  return rows
