"""Figures of ``python -m bnjax.analyze``'s results (``WORKDIR/analysis/NAME.jsonl``).

  surface   each run's analysis/loss_surface.jsonl: a 2-D surface as contours of log10
            loss, one panel per run and step (the first, middle and last analysed); a
            1-D surface as curves, one panel per run with a curve per such step
  layers    the top eigenvalue of each weight layer's Hessian block against the layer
            number, a line per step analysed (analysis/layer_top_eigenvalues.jsonl:
            analyze --probe=top_eigenvalues --blocks=layers --name=layer_top_eigenvalues)
  analysis  adaptive sharpness (analysis/adaptive_sharpness.jsonl) and the top Hessian
            eigenvalue (analysis/top_eigenvalues.jsonl) over the checkpoint steps, and
            one against the other; one row per model family

``draw_file`` draws one jsonl of any probe on its own (analyze's ``NAME.png``).
"""

import pathlib
import warnings

import numpy as np

from bnjax.plots import panels  # noqa: F401  (first: selects matplotlib's Agg backend)
from bnjax.plots import measures
from bnjax.analyze import layout
from bnjax.plots.panels import NoData, need
from bnjax.plots.runs import Group

import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.ticker  # noqa: E402  pylint: disable=g-import-not-at-top

SURFACE = 'loss_surface'
MAX_CURVE_LENGTH = 10  # longer vector fields are not drawn as curves over steps
_NOT_FIELDS = ('step', 'settings', 'seconds')


def lines_of(workdir: pathlib.Path, name: str) -> list[dict]:
  """The lines of ``workdir/analysis/<name>.jsonl``, by step ([] if none)."""
  return sorted(
    layout.read_lines(layout.output(pathlib.Path(workdir), name)), key=lambda l: l['step']
  )


def picks(lines: list[dict]) -> list[dict]:
  """The first, middle and last of ``lines`` (fewer when there are fewer)."""
  idx = sorted({0, (len(lines) - 1) // 2, len(lines) - 1}) if lines else []
  return [lines[i] for i in idx]


def _log_loss(line: dict) -> np.ndarray:
  loss = np.asarray(line['loss'], dtype=np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(np.isfinite(loss) & (loss > 0), np.log10(loss), np.nan)


def contour(ax, line: dict, title: str) -> None:
  """A 2-D surface line as filled contours of log10 loss; the checkpoint at (0, 0)."""
  z = np.ma.masked_invalid(_log_loss(line))
  a, b = (np.asarray(g) for g in line['grid'])
  if z.count() > 1 and np.ptp(z.compressed()) > 0:
    filled = ax.contourf(a, b, z.T, levels=20, cmap='viridis')
    ax.contour(a, b, z.T, levels=10, colors='k', linewidths=0.3)
    ax.figure.colorbar(filled, ax=ax, label='log10 loss')
  ax.plot(0, 0, 'r+', markersize=8)
  directions = line['settings'].get('directions', ['', ''])
  ax.set(title=title, xlabel=f'a ({directions[0]})', ylabel=f'b ({directions[-1]})')
  ax.title.set_fontsize(8)


def curves(ax, lines: list[dict], title: str) -> None:
  """1-D surface lines as loss against the coordinate, one curve per step."""
  for i, line in enumerate(lines):
    ax.plot(
      line['grid'][0],
      np.asarray(line['loss'], dtype=np.float64),
      color=plt.get_cmap('viridis')(i / max(len(lines) - 1, 1)),
      label=f'step {line["step"]}',
    )
  ax.axvline(0, color='gray', lw=0.6)
  ax.set(
    title=title,
    xlabel=f'a ({line["settings"].get("directions", [""])[0]})',
    ylabel='loss (log)',
    yscale='log',
  )
  ax.title.set_fontsize(8)
  ax.legend(fontsize=6)


def _num_panels(lines: list[dict]) -> int:
  """Panels of one run's surfaces: one of curves (1-D), else one per picked step."""
  return 1 if len(lines[0]['grid']) == 1 else len(picks(lines))


def _surface_axes(ax_row, name: str, lines: list[dict]) -> None:
  """One run's surface panels in ``ax_row``, unused axes hidden."""
  chosen = picks(lines)
  if len(chosen[0]['grid']) == 1:
    curves(ax_row[0], chosen, f'{name}: loss along one direction')
  else:
    for ax, line in zip(ax_row, chosen):
      contour(ax, line, f'{name}: step {line["step"]}')
  for ax in ax_row[_num_panels(lines) :]:
    ax.axis('off')


def _grid_figure(rows: list[tuple[str, list[dict]]], title: str):
  """Surface panels, a row per (name, lines)."""
  fig, axes = panels.subplots(len(rows), max(_num_panels(lines) for _, lines in rows), height=3.0)
  for ax_row, (name, lines) in zip(axes, rows):
    _surface_axes(ax_row, name, lines)
  return panels.finish(fig, title)


def surface(groups: list[Group]):
  """Every run's analysis/loss_surface.jsonl: contours (2-D) or curves (1-D)."""
  rows = [
    (r.path.name, lines) for g in groups for r in g.runs if (lines := lines_of(r.path, SURFACE))
  ]
  need(
    rows,
    f'surface (runs with analysis/{SURFACE}.jsonl: python -m bnjax.analyze --probe=loss_surface)',
  )
  return _grid_figure(rows, 'Loss surfaces at the first, middle and last step analysed')


def _series(run, name: str, field: str, column: int | None = 0):
  lines = lines_of(run.path, name)
  steps = np.array([l['step'] for l in lines])
  values = [np.asarray(l[field], dtype=np.float64) for l in lines]
  values = np.array([v.reshape(-1)[column] if column is not None else v for v in values])
  return steps, values


SHARPNESS_PANELS = (
  ('top Hessian eigenvalue', 'top_eigenvalues', 'eigenvalues'),
  ('adaptive sharpness', 'adaptive_sharpness', 'sharpness'),
)


def sharpness_vs_eigenvalue(groups: list[Group]):
  """Adaptive sharpness and the top eigenvalue over the checkpoint steps, and one against
  the other (a line per run through its steps), per model family."""
  have = lambda r: any(lines_of(r.path, n) for _, n, _ in SHARPNESS_PANELS)
  chosen = need(
    [g for g in groups if any(have(r) for r in g.runs)],
    'analysis (runs with analysis/top_eigenvalues.jsonl or '
    'adaptive_sharpness.jsonl: python -m bnjax.analyze)',
  )
  families = sorted({g.family for g in chosen}, key=lambda f: f != 'vgg')
  fig, axes = panels.subplots(len(families), 3, height=3.6)
  for row, family in zip(axes, families):
    for g in (g for g in chosen if g.family == family):
      for r in filter(have, g.runs):  # a legend entry per run analysed
        _sharpness_row(row, g, r, f'{r.label()}, seed {r.seed}')
    for ax, (what, _, _) in zip(row, SHARPNESS_PANELS):
      ax.set(title=f'{family.upper()}: {what}', xlabel='training step', ylabel=what, yscale='log')
    row[2].set(
      title=f'{family.upper()}: adaptive sharpness vs top eigenvalue',
      xlabel='top Hessian eigenvalue',
      ylabel='adaptive sharpness',
      xscale='log',
      yscale='log',
    )
    for ax in row:
      ax.title.set_fontsize(8)
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    panels.legend_below(row[1], ncol=1)
  return panels.finish(
    fig, "Adaptive sharpness (blind to BN's rescaling) and the top Hessian eigenvalue over training"
  )


def _sharpness_row(row, group: Group, run, label) -> None:
  series = [_series(run, name, field) for _, name, field in SHARPNESS_PANELS]
  for ax, (steps, values) in zip(row, series):
    ax.plot(steps, values, '.-', color=group.color, lw=1, markersize=3, label=label)
  (s1, eig), (s2, sharp) = series
  common, i1, i2 = np.intersect1d(s1, s2, return_indices=True)
  if len(common):
    row[2].plot(eig[i1], sharp[i2], '.-', color=group.color, lw=1, markersize=3, label=label)
    row[2].plot(eig[i1][:1], sharp[i2][:1], 'o', color=group.color, mfc='none')  # step 0 side


def layer_spectra(groups: list[Group]):
  """Each run's top Hessian eigenvalue of every weight layer's diagonal block against the
  layer number, a line per analysed step (analysis/layer_top_eigenvalues.jsonl)."""
  runs = need(
    [r for g in groups for r in g.runs if lines_of(r.path, measures.LAYERS)],
    f'layers (runs with analysis/{measures.LAYERS}.jsonl: python -m bnjax.analyze '
    f'--probe=top_eigenvalues --blocks=layers --name={measures.LAYERS})',
  )
  fig, axes = panels.subplots(1, len(runs), height=3.4, sharey=True)
  for ax, run in zip(axes[0], runs):
    lines = lines_of(run.path, measures.LAYERS)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(lines)))
    for line, color in zip(lines, colors):
      layers, values = measures.weight_layers(line['eigenvalues'])
      ax.plot(layers, values, '.-', color=color, lw=1, markersize=3, label=f'step {line["step"]}')
    ax.set(title=run.path.name, xlabel='layer', ylabel='top eigenvalue of its block', yscale='log')
    ax.title.set_fontsize(8)
  panels.legend_below(axes[0][0], ncol=3)
  return panels.finish(fig, "Top eigenvalue of each weight layer's Hessian block")


ANALYSIS = {'surface': surface, 'analysis': sharpness_vs_eigenvalue, 'layers': layer_spectra}


# -------------------------------------------------------------- one jsonl on its own
def _curve_fields(lines: list[dict]) -> list[str]:
  """Fields that are numbers, short vectors, or dicts of numbers (per block), in order."""
  out = []
  for field, value in lines[0].items():
    if field in _NOT_FIELDS:
      continue
    values = list(value.values()) if isinstance(value, dict) else [value]
    arrays = [np.asarray(v, dtype=object) for v in values]
    if all(a.ndim <= 1 and a.size <= MAX_CURVE_LENGTH for a in arrays):
      out.append(field)
  return out


def _field_panel(ax, lines: list[dict], field: str) -> None:
  steps = [l['step'] for l in lines]
  first = lines[0][field]
  keys = list(first) if isinstance(first, dict) else [None]
  for key in keys:
    values = [
      np.asarray(l[field] if key is None else l[field][key], dtype=np.float64) for l in lines
    ]
    values = np.array([np.atleast_1d(v) for v in values])
    for j in range(values.shape[1]):
      label = ' '.join(str(x) for x in (key, j if values.shape[1] > 1 else None) if x is not None)
      ax.plot(steps, values[:, j], '.-', lw=1, markersize=3, label=label or None)
  ax.set(title=field, xlabel='training step')
  finite = np.asarray([y for line in ax.get_lines() for y in line.get_ydata()], np.float64)
  finite = finite[np.isfinite(finite)]
  if len(finite) and finite.min() > 0 and finite.max() > 100 * finite.min():
    ax.set_yscale('log')
  if 1 < len(ax.get_lines()) <= MAX_CURVE_LENGTH:
    ax.legend(fontsize=5)


def density(ax, lines: list[dict]) -> None:
  """spectral_density's nodes and weights as a histogram per picked step (symlog x)."""
  nodes = np.concatenate([np.ravel(l['nodes']) for l in lines]).astype(np.float64)
  top = max(np.nanmax(np.abs(nodes)), 1e-30)
  linthresh = top * 1e-4
  outer = np.geomspace(linthresh, top * 1.05, 30)
  bins = np.concatenate([-outer[::-1], [0.0], outer])
  for i, line in enumerate(picks(lines)):
    hist, _ = np.histogram(np.ravel(line['nodes']), bins, weights=np.ravel(line['weights']))
    ax.stairs(
      np.maximum(hist, 1e-9),
      bins,
      label=f'step {line["step"]}',
      color=plt.get_cmap('viridis')(i / 2),
    )
  ax.set_xscale('symlog', linthresh=linthresh)
  ax.tick_params(axis='x', labelsize=6, rotation=40)
  ax.set(
    title='spectral density',
    xlabel='eigenvalue',
    ylabel='weight per bin',
    yscale='log',
    ylim=(1e-6, 1.5),
  )
  ax.legend(fontsize=6)


def draw_file(path: pathlib.Path, out: pathlib.Path) -> None:
  """The figure of one analysis jsonl, written atomically to ``out`` (PNG)."""
  lines = sorted(layout.read_lines(path), key=lambda l: l['step'])
  if not lines:
    raise NoData(f'{path} holds no results')
  name = f'{path.parent.parent.name}/{path.stem}'
  if lines[0]['settings'].get('probe') == SURFACE:
    fig = _grid_figure([(name, lines)], f'{name}: loss surface')
  else:
    fields = _curve_fields(lines) + (['nodes'] if {'nodes', 'weights'} <= set(lines[0]) else [])
    fields = fields or ['(no field to draw over steps)']
    cols = min(len(fields), 3)
    fig, axes = panels.subplots(-(-len(fields) // cols), cols, height=2.8)
    for ax, field in zip(axes.flat, fields):
      if field == 'nodes':
        density(ax, lines)
      elif field in lines[0]:
        with warnings.catch_warnings():
          warnings.simplefilter('ignore', UserWarning)  # log axes of non-positive values
          _field_panel(ax, lines, field)
      else:
        ax.text(0.5, 0.5, field, ha='center', transform=ax.transAxes)
    for ax in list(axes.flat)[len(fields) :]:
      ax.axis('off')
    panels.finish(
      fig,
      f'{name} ({lines[0]["settings"].get("bn_mode")} mode, '
      f'{lines[0]["settings"].get("batches")} batch(es))',
    )
  layout.write_atomically(out, lambda tmp: fig.savefig(tmp, dpi=110, format='png'))
  plt.close(fig)
