"""Every number docs/results.md quotes, from the runs' metrics alone, with its spread over seeds.

  python -m bnjax.plots numbers --root SWEEP_ROOT --out numbers.md

Runs whose configs differ in the seed alone are one configuration (a row). Each cell is
``mean [min, max]`` over the seeds that have the value (the value alone for one seed);
the ``seeds`` column gives their count and how many diverged. The measures are defined
in ``plots.measures``; each table's legend says what a column holds.
"""

import numpy as np

from bnjax.analyze import layout
from bnjax.plots import measures
from bnjax.plots.measures import over_seeds
from bnjax.plots.runs import Group, Run, group_runs

DLN_LOSS_THRESHOLDS = (20_000, 10_000, 6_500)  # first step below each (DLN, Fig. 5)


def _per_layer(group: Group, fn, probe: str = 'ics') -> str:
  layers = group.config['probes'].get(probe, {}).get('layers', ())
  cells = [over_seeds(group, lambda r, j=j: fn(r, j)).text() for j in range(len(layers))]
  return ' / '.join(c or '-' for c in cells) if any(cells) else ''


def _activation_layers(group: Group) -> list[int]:
  return list(group.config['probes'].get('activations', {}).get('layers', ()))


# (column, legend, group -> cell text); a column appears when some row has a value.
TRAINING = (
  (
    'train_acc',
    'training accuracy, mean of the last 100 steps (%)',
    lambda g: over_seeds(g, lambda r: 100 * measures.tail_mean(r, 'train_accuracy')).text(),
  ),
  (
    'test_acc',
    'final test accuracy (%)',
    lambda g: over_seeds(g, lambda r: 100 * measures.last(r, 'eval_accuracy')).text(),
  ),
  (
    'test_acc_expected_noise',
    'final test accuracy with the noise at its expectation '
    '(scale (1 + n_sigma) / 2, shift 0) instead of removed (%)',
    lambda g: over_seeds(
      g, lambda r: 100 * measures.last(r, 'eval_accuracy_expected_noise')
    ).text(),
  ),
  (
    'train_loss',
    'training loss, mean of the last 100 steps',
    lambda g: over_seeds(g, lambda r: measures.tail_mean(r, 'train_loss')).text(4),
  ),
  *(
    (
      f'below_{t}',
      f'first step with training loss below {t:,} (DLN)',
      lambda g, t=t: (
        over_seeds(g, lambda r: measures.first_step_below(r, t)).text(4)
        if g.family == 'dln'
        else ''
      ),
    )
    for t in DLN_LOSS_THRESHOLDS
  ),
  (
    'weights_moved',
    '||W_T - W_0||_F / ||W_0||_F over all layers at the last probe',
    lambda g: over_seeds(g, measures.weight_distance).text(),
  ),
  (
    'weights_moved_scale_free',
    "the same with each unit's scale removed",
    lambda g: over_seeds(g, lambda r: measures.weight_distance(r, 'scale_free')).text(),
  ),
)
ICS = (
  (
    'ics_l2',
    "median ||G - G'|| per probed layer (first / second)",
    lambda g: _per_layer(g, lambda r, j: measures.ics_median(r, 'l2', j)),
  ),
  (
    'ics_cos',
    "median cos(G, G') per probed layer",
    lambda g: _per_layer(g, lambda r, j: measures.ics_median(r, 'cosine', j)),
  ),
  (
    'ics_relative',
    "median ||G - G'|| / ||G|| per probed layer",
    lambda g: _per_layer(g, lambda r, j: measures.ics_median(r, 'relative', j)),
  ),
)
LANDSCAPE = (
  (
    'loss_band',
    'median over probed steps of max/min of L(theta - eta g) over eta',
    lambda g: over_seeds(g, lambda r: measures.landscape_median(r, 'loss_band')).text(),
  ),
  (
    'grad_pred',
    'median of max over eta of ||grad L(theta - eta g) - g||',
    lambda g: over_seeds(g, lambda r: measures.landscape_median(r, 'grad_pred')).text(),
  ),
  (
    'beta',
    'median effective beta',
    lambda g: over_seeds(g, lambda r: measures.landscape_median(r, 'beta')).text(),
  ),
  (
    'beta_lr_2',
    'median effective beta x LR / 2 (1: the edge of stability)',
    lambda g: over_seeds(g, measures.beta_lr_2).text(),
  ),
)
CURVATURE = (
  (
    'sharpness_first',
    'top Hessian eigenvalue (BN in train mode) at the first probe',
    lambda g: over_seeds(g, lambda r: measures.sharpness(r, 'train', 'first')).text(),
  ),
  (
    'sharpness_last',
    'the same at the last probe',
    lambda g: over_seeds(g, lambda r: measures.sharpness(r, 'train', 'last')).text(),
  ),
  (
    'sharpness_last_lr_2',
    'the last one x LR / 2 (1: the edge of stability)',
    lambda g: over_seeds(g, measures.sharpness_lr_2).text(),
  ),
  (
    'sharpness_eval_first',
    'top eigenvalue with BN in eval mode, first probe',
    lambda g: over_seeds(g, lambda r: measures.sharpness(r, 'eval', 'first')).text(),
  ),
  (
    'sharpness_eval_last',
    'the same, last probe',
    lambda g: over_seeds(g, lambda r: measures.sharpness(r, 'eval', 'last')).text(),
  ),
  (
    'density_min_last',
    'smallest SLQ node (Hessian eigenvalue estimate) at the last step',
    lambda g: over_seeds(g, lambda r: _density_extreme(r, np.nanmin)).text(),
  ),
  (
    'density_max_last',
    'largest SLQ node at the last step',
    lambda g: over_seeds(g, lambda r: _density_extreme(r, np.nanmax)).text(),
  ),
  (
    'thm41_max_gap',
    'Theorem 4.1: largest |lhs - rhs| / lhs over every unit, layer, step',
    lambda g: over_seeds(g, measures.theorem_41_gap).text(2),
  ),
  (
    'thm42_min_slack',
    'Theorem 4.2: smallest (bound - value) / |bound| (>= 0: it held)',
    lambda g: over_seeds(g, measures.theorem_42_min_slack).text(2),
  ),
)
ACTIVATIONS = (
  (
    'var_range',
    "one unit's batch variance, max/min over probed steps, per probed layer",
    lambda g: ' / '.join(
      over_seeds(g, lambda r, k=k: measures.activation_var_range(r, k)).text() or '-'
      for k in _activation_layers(g)
    ),
  ),
)


def _density_extreme(run: Run, reduce) -> float:
  _, nodes = run.series('probe/spectral_density/nodes')
  return float(reduce(nodes[-1])) if len(nodes) else float('nan')


def _name(group: Group) -> str:
  """The configuration's name: its first workdir's name without a trailing _seedN."""
  name = group.first.path.name
  stem, _, tail = name.rpartition('_seed')
  return stem if stem and tail.isdigit() else name


def _state(group: Group) -> str:
  states = [r.status.get('state', '?') for r in group.runs]
  return ', '.join(f'{states.count(s)} {s}' for s in sorted(set(states)))


def table(groups: list[Group], columns, title: str) -> list[str]:
  """One markdown table: a row per configuration, the columns some row has a value for."""
  rows = [{c: fn(g) for c, _, fn in columns} for g in groups]
  cols = [c for c, _, _ in columns if any(r[c] for r in rows)]
  if not cols:
    return []
  head = ['config', 'variant', 'seeds', 'state', 'steps'] + cols
  lines = [f'## {title}', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for g, r in zip(groups, rows):
    if not any(r[c] for c in cols):
      continue
    steps = '/'.join(sorted({str(x.status.get('step', '')) for x in g.runs}))
    cells = [_name(g), g.label(), str(len(g.runs)), _state(g), steps] + [r[c] for c in cols]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += [''] + [f'- `{c}`: {what}' for c, what, _ in columns if c in cols] + ['']
  return lines


def matched_loss(groups: list[Group]) -> list[str]:
  """Standard vs BN at equal training loss: the landscape at the first probed step where
  each seed's loss L(theta_t) is at most a target, for targets both configurations reach."""
  lines = [
    '## The landscape at matched training loss (standard vs BN)',
    '',
    'Targets: the geometric midpoint and the end of the loss range both configurations '
    'cover (the larger of their smallest losses); each seed contributes its first '
    'probed step at or below the target.',
    '',
    '| family, LR | target loss | variant | step reached | grad_pred | beta |',
    '|---|---|---|---|---|---|',
  ]
  pairs = {}
  for g in groups:
    if g.norm in ('none', 'batch') and g.has('probe/landscape/beta'):
      pairs.setdefault((g.family, g.lr), {})[g.norm] = g
  for (family, lr), pair in sorted(pairs.items(), key=lambda kv: (kv[0][0] != 'vgg', -kv[0][1])):
    if len(pair) < 2:
      continue
    lows, highs = [], []
    for g in pair.values():
      loss = np.concatenate([measures.landscape_row_stats(r)['loss'] for r in g.runs])
      loss = loss[np.isfinite(loss) & (loss > 0)]
      lows.append(loss.min())
      highs.append(np.percentile(loss, 95))
    end = max(lows) * 1.001
    for target in (np.sqrt(end * min(highs)), end):
      for norm in ('none', 'batch'):
        g = pair[norm]
        cells = [
          over_seeds(g, lambda r, t=target, f=field: measures.at_matched_loss(r, t, f)).text(d)
          for field, d in (('step', 4), ('grad_pred', 3), ('beta', 3))
        ]
        lines.append(
          f'| {family.upper()}, {lr:g} | {target:.4g} | '
          f'{g.label(False)} | ' + ' | '.join(cells) + ' |'
        )
  return lines + ['']


# (analysis/<name>.jsonl, field): fisher_trace is hessian_trace --operator=fisher --name=fisher_trace
ANALYSES = (
  ('adaptive_sharpness', 'sharpness'),
  ('top_eigenvalues', 'eigenvalues'),
  ('hessian_trace', 'estimate'),
  ('fisher_trace', 'estimate'),
)


def analyses(runs: list[Run]) -> list[str]:
  """``bnjax.analyze`` results found in the runs' analysis/ folders: each probe's value at
  every analysed step, one row per run and probe."""
  lines = [
    '## Analyses of saved checkpoints (`python -m bnjax.analyze`)',
    '',
    '| run | probe | step: value |',
    '|---|---|---|',
  ]
  found = False
  for run in runs:
    for probe, field in ANALYSES:
      rows = layout.read_lines(layout.output(run.path, probe))
      if not rows:
        continue
      found = True
      values = [(r['step'], np.ravel(r[field])[0]) for r in rows if field in r]
      cells = ', '.join(f'{step}: {measures.fmt(float(v), 4)}' for step, v in sorted(values))
      lines.append(f'| {run.path.name} | {probe}.{field} | {cells} |')
    rows = layout.read_lines(layout.output(run.path, measures.LAYERS))
    if rows:
      found = True
      lines.append(
        f'| {run.path.name} | {measures.LAYERS}: min - max over weight layers '
        f'(layer of the max) | {_layer_cells(rows)} |'
      )
  return lines + [''] if found else []


def _layer_cells(rows: list[dict]) -> str:
  cells = []
  for r in sorted(rows, key=lambda r: r['step']):
    layers, values = measures.weight_layers(r['eigenvalues'])
    top = int(np.argmax(values))
    cells.append(
      f'{r["step"]}: {measures.fmt(min(values), 4)} - {measures.fmt(values[top], 4)} '
      f'(#{layers[top]})'
    )
  return ', '.join(cells)


def markdown(runs: list[Run]) -> str:
  """numbers.md: the tables above for every configuration among ``runs``."""
  groups = sorted(group_runs(runs), key=lambda g: (g.family != 'vgg', _name(g)))
  lines = [
    '# Numbers behind docs/results.md',
    '',
    f'Generated by `python -m bnjax.plots numbers` from {len(runs)} runs '
    f'({len(groups)} configurations). Each cell: mean [min, max] over the seeds that '
    'have the value; `seeds`: how many runs the configuration has.',
    '',
  ]
  for title, columns in (
    ('Training', TRAINING),
    ('Internal covariate shift (Definition 2.1)', ICS),
    ('Landscape along the gradient (Figs. 4, 10-13)', LANDSCAPE),
    ('Curvature and Section 4', CURVATURE),
    ('Activations (Figs. 1c, 2, 6, 8, 9)', ACTIVATIONS),
  ):
    lines += table(groups, columns, title)
  lines += matched_loss(groups)
  lines += analyses(runs)
  return '\n'.join(lines) + '\n'
