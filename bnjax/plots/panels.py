"""Drawing blocks the figures share: panels, seed bands, landscape bands, ridgelines.

A configuration run at several seeds (a ``Group``) is drawn as the mean over its seeds
with a min-max band; a seed that diverged ends in an x at its last finite value.
"""

import warnings

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.transforms  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from bnjax.plots.runs import Group  # noqa: E402

SMOOTH_STEPS = 50  # moving-average window of per-batch training curves (VGG)
COLUMN = 3.4  # inches: a figure panel stays readable at a column's width


class NoData(ValueError):
  """The runs given do not hold what a figure needs."""


def need(items: list, what: str) -> list:
  if not items:
    raise NoData(f'no runs for {what}')
  return items


def subplots(rows: int, cols: int, height: float = 2.6, **kw):
  # At least two columns wide, so that the figure's title fits.
  return plt.subplots(
    rows, cols, figsize=(COLUMN * max(cols, 2), height * rows), squeeze=False, **kw
  )


def finish(fig, title: str):
  # The title in the top 0.4 inch, the panels below it, whatever the figure's height.
  height = fig.get_figheight()
  fig.suptitle(title, fontsize=11, y=1 - 0.08 / height, va='top')
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
  return fig


def legend_below(ax, ncol: int = 2) -> None:
  """A legend under the panel, where it covers no line: half an inch below the panel's
  bottom edge, clear of its tick labels and x label whatever the panel's height."""
  below = matplotlib.transforms.offset_copy(ax.transAxes, fig=ax.figure, y=-0.5, units='inches')
  ax.legend(
    fontsize=6,
    loc='upper center',
    bbox_to_anchor=(0.5, 0),
    bbox_transform=below,
    ncol=ncol,
    frameon=False,
  )


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Moving average along the last step axis (axis 1 of [S, T])."""
  if window <= 1 or values.shape[-1] < window:
    return values
  kernel = np.ones(window) / window
  return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode='valid'), -1, values)


def seed_curve(
  ax, group: Group, key: str, scale: float = 1.0, window: int = 1, label=None, column=None, **kw
) -> None:
  """Mean over seeds of ``key`` (its ``column`` for vector values), min-max band, x at
  each diverged seed's last finite value."""
  steps, values = group.stack(key)
  if not len(steps):
    return
  values = values * scale
  if column is not None:
    values = values[..., column]
  if window > 1 and values.shape[1] >= window:
    values, steps = smooth(values, window), steps[window - 1 :]
  color = kw.pop('color', group.color)
  with warnings.catch_warnings():  # all-NaN columns (no seed there) stay NaN
    warnings.simplefilter('ignore', RuntimeWarning)
    mean = np.nanmean(values, 0)
    lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
  ax.plot(steps, mean, color=color, lw=1.2, label=group.label() if label is None else label, **kw)
  if len(group.runs) > 1:
    ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
  # The rows of ``values`` are the runs with a series; one still going ends with no x.
  diverged = [
    r.diverged for r in group.runs if len((key(r) if callable(key) else r.series(key))[0])
  ]
  for row, ended in zip(values, diverged):
    finite = np.nonzero(np.isfinite(row))[0]
    if ended and len(finite) and finite[-1] < len(row) - 1:
      ax.plot(steps[finite[-1]], row[finite[-1]], 'x', color='k', markersize=7, mew=1.5)


def training(ax, group: Group, label=None, **kw) -> None:
  """The training curve the paper shows: VGG accuracy (%), DLN loss (log)."""
  if group.family == 'vgg':
    seed_curve(ax, group, 'train_accuracy', 100, SMOOTH_STEPS, label=label, **kw)
    ax.set_ylabel(f'training accuracy (%)\n({SMOOTH_STEPS}-step mean)')
  else:
    seed_curve(ax, group, 'train_loss', label=label, **kw)
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
  ax.set_xlabel('training step')


def band(ax, group: Group, key: str, label: bool = True) -> None:
  """min-max over the vector ``key`` (e.g. over step sizes) at each step, one translucent
  band per seed with its edges drawn (a band of zero width stays visible as a line)."""
  for i, run in enumerate(group.runs):
    steps, values = run.series(key)
    if values.ndim != 2:
      continue
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)
      values = np.where(np.isfinite(values), values, np.nan)
      lo, hi = np.nanmin(values, 1), np.nanmax(values, 1)
    alpha = 0.45 / len(group.runs) ** 0.5
    ax.fill_between(
      steps,
      lo,
      hi,
      color=group.color,
      alpha=alpha,
      lw=0,
      label=group.label() if label and i == 0 else None,
    )
    for edge in (lo, hi):
      ax.plot(steps, edge, color=group.color, lw=0.4, alpha=0.8)


def ridgeline(ax, group: Group, layer: int, rows: int = 8) -> tuple[float, float] | None:
  """One unit's activation histograms at ``rows`` steps, stacked upwards (Figs. 1c, 2, 6, 9),
  of the group's first seed (each seed draws its own random unit). Returns the x range."""
  run = group.first
  key = f'probe/activations/layer{layer}/hist'
  steps, hist = run.series(key)
  _, edges = run.series(f'probe/activations/layer{layer}/edges')
  ax.set_title(f'{group.label()}\nlayer #{layer}, seed {run.seed}', fontsize=7)
  ax.set_xlabel('activation value')
  if hist.ndim != 2:
    ax.text(0.5, 0.5, 'not probed', ha='center', transform=ax.transAxes)
    return None
  ok = np.all(np.isfinite(edges), 1) & np.all(np.isfinite(hist), 1)
  picks = np.nonzero(ok)[0]
  picks = picks[np.unique(np.linspace(0, len(picks) - 1, min(rows, len(picks))).astype(int))]
  cmap = plt.get_cmap('viridis')
  for row, i in enumerate(picks):
    centres = 0.5 * (edges[i, 1:] + edges[i, :-1])
    density = hist[i] / max(hist[i].max(), 1)
    y0 = row * 0.7
    color = cmap(row / max(len(picks) - 1, 1))
    ax.fill_between(
      centres,
      y0,
      y0 + density,
      color=color,
      alpha=0.7,
      lw=0.5,
      edgecolor='k',
      zorder=len(picks) - row,
    )
  ax.set_yticks([row * 0.7 for row in range(len(picks))])
  ax.set_yticklabels([f'{int(steps[i])}' for i in picks], fontsize=7)
  ax.set_ylabel('training step')
  if not len(picks):
    return None
  return float(np.min(edges[picks, 0])), float(np.max(edges[picks, -1]))


def share_x(axes_and_ranges: list) -> None:
  """One x range (the union) for ridgeline panels that are compared with each other."""
  ranges = [r for _, r in axes_and_ranges if r is not None]
  if ranges:
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    for ax, _ in axes_and_ranges:
      ax.set_xlim(lo, hi)


def layers_of(groups: list[Group], probe: str) -> list[int]:
  """Layer numbers any run of ``groups`` recorded for ``probe``."""
  return sorted({k for g in groups for r in g.runs for k in layers_of_run(r, probe)})


def probed_layers(group: Group) -> list[int]:
  return list(group.config['probes'].get('ics', {}).get('layers', ()))


def layers_of_run(run, probe: str) -> list[int]:
  """Layer numbers a run's ``probe`` recorded (from its first lines' keys)."""
  keys = {k for line in run.lines[:50] for k in line if k.startswith(f'probe/{probe}/layer')}
  return sorted({int(k.split('/')[2][len('layer') :]) for k in keys})
