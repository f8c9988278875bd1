r"""The paper's figures from what runs wrote (metrics.jsonl, config.json, status.json).

  python -m bnjax.plots FIGURE --workdirs DIR... --out FILE.png
  python -m bnjax.plots all --root SWEEP_ROOT --out DIR
  python -m bnjax.plots numbers --root SWEEP_ROOT --out FILE.md   (see plots.numbers)

FIGURE is one of fig1 fig2 fig3 fig4 fig5 fig6 fig8 fig9 fig10 fig11 fig12 fig13 (the
paper's, PAPER.md) or sharpness density theorems weights layernorm eos matched (beyond
the paper) or surface analysis (of ``bnjax.analyze`` results). ``all`` draws every figure the runs under the root allow and says which it
skipped and why. Runs whose configs differ in the seed alone are one configuration:
drawn as the mean over seeds with a min-max band, quoted as mean [min, max]. Labels
come from each run's config.json; a diverged seed ends in an x.
"""

import pathlib

import matplotlib.pyplot as plt

from bnjax.plots.figures import BEYOND, FIGURES, PAPER, NoData
from bnjax.plots.runs import Group, Run, find_runs, group_runs, load_run

DPI = 110


def draw(name: str, runs: list[Run], out: str | pathlib.Path, dpi: int = DPI) -> list[str]:
  """Draws figure ``name`` of ``runs`` into ``out`` (PNG); returns its panel titles."""
  if name not in FIGURES:
    raise ValueError(f'unknown figure {name!r}; valid: {", ".join(FIGURES)}')
  fig = FIGURES[name](group_runs(runs))
  titles = [ax.get_title() for ax in fig.axes if ax.axison and ax.get_title()]
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  plt.close(fig)
  return titles


def draw_all(runs: list[Run], out_dir: str | pathlib.Path, dpi: int = DPI) -> dict[str, str]:
  """Every figure the runs allow, as OUT_DIR/<name>.png; {name: 'drawn' or why not}."""
  out_dir = pathlib.Path(out_dir)
  report = {}
  for name in FIGURES:
    try:
      draw(name, runs, out_dir / f'{name}.png', dpi)
      report[name] = 'drawn'
    except NoData as e:
      report[name] = f'skipped: {e}'
  return report


def draw_sweep_training(workdirs, out: str | pathlib.Path) -> None:
  """A sweep's training curves in one figure: training loss and accuracy, test accuracy."""
  runs = [load_run(w) for w in workdirs]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  for i, r in enumerate(runs):
    label = f'{r.path.name}' + (' (diverged)' if r.diverged else '')
    for ax, key in zip(axes, ('train_loss', 'train_accuracy', 'eval_accuracy')):
      steps, values = r.series(key)
      ax.plot(
        steps,
        values,
        color=f'C{i % 10}',
        lw=0.8,
        label=label,
        marker='o' if key == 'eval_accuracy' else None,
        markersize=2,
      )
  for ax, (title, ylabel) in zip(
    axes,
    (
      ('training loss', 'loss (log)'),
      ('training accuracy', 'accuracy (fraction)'),
      ('test accuracy', 'accuracy (fraction)'),
    ),
  ):
    ax.set(title=title, xlabel='training step', ylabel=ylabel)
  axes[0].set_yscale('log')
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(out, dpi=DPI)
  plt.close(fig)


__all__ = [
  'BEYOND',
  'FIGURES',
  'PAPER',
  'NoData',
  'Group',
  'Run',
  'draw',
  'draw_all',
  'draw_sweep_training',
  'find_runs',
  'group_runs',
  'load_run',
]
