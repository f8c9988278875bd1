"""The numbers behind the figures: one markdown row per run, from its metrics alone.

  python -m bnjax.plots numbers --root SWEEP_ROOT --out numbers.md

Medians are over every probed step of the run (a diverged run: its finite values), so
one number summarises a curve the way the paper's figures are read by eye.
"""

import numpy as np

from bnjax.plots.runs import Run

COLUMNS = (
    ('run', 'name (workdir)'),
    ('variant', 'normaliser, LR'),
    ('state', 'done / diverged'),
    ('steps', 'last step'),
    ('train_acc', 'training accuracy, mean of the last 100 steps (%)'),
    ('test_acc', 'final test accuracy (%)'),
    ('train_loss', 'training loss, mean of the last 100 steps'),
    ('ics_l2', "median ||G - G'|| per probed layer"),
    ('ics_cos', "median cos(G, G') per probed layer"),
    ('loss_band', 'median of max/min of L(theta - eta g) over eta'),
    ('grad_pred', 'median of max over eta of ||grad L(theta - eta g) - g||'),
    ('beta', 'median effective beta'),
    ('beta_lr_2', 'median effective beta x LR / 2'),
    ('sharpness', 'top Hessian eigenvalue (train mode): first -> last'),
    ('sharpness_eval', 'the same with BN in eval mode'),
)


def _median(values: np.ndarray) -> float:
  values = values[np.isfinite(values)]
  return float(np.median(values)) if values.size else float('nan')


def _tail_mean(run: Run, key: str, n: int = 100) -> float:
  _, v = run.series(key)
  v = v[np.isfinite(v)]
  return float(np.mean(v[-n:])) if v.size else float('nan')


def _fmt(x: float, digits: int = 3) -> str:
  return '' if x is None or not np.isfinite(x) else f'{x:.{digits}g}'


def row(run: Run) -> dict[str, str]:
  out = {'run': run.path.name, 'variant': run.label(),
         'state': run.status.get('state', '?'), 'steps': str(run.status.get('step', ''))}
  if run.family == 'vgg':
    out['train_acc'] = _fmt(100 * _tail_mean(run, 'train_accuracy'))
    _, test = run.series('eval_accuracy')
    out['test_acc'] = _fmt(100 * test[-1]) if len(test) else ''
  out['train_loss'] = _fmt(_tail_mean(run, 'train_loss'))
  for key, name in (('l2', 'ics_l2'), ('cosine', 'ics_cos')):
    _, v = run.series(f'probe/ics/{key}')
    if v.ndim == 2:
      out[name] = ' / '.join(_fmt(_median(v[:, j])) for j in range(v.shape[1]))
  _, loss = run.series('probe/landscape/loss')
  if loss.ndim == 2:
    with np.errstate(all='ignore'):
      out['loss_band'] = _fmt(_median(np.nanmax(loss, 1) / np.nanmin(loss, 1)))
      _, diff = run.series('probe/landscape/grad_diff')
      out['grad_pred'] = _fmt(_median(np.nanmax(diff, 1)))
    _, beta = run.series('probe/landscape/beta')
    out['beta'] = _fmt(_median(beta))
    out['beta_lr_2'] = _fmt(_median(beta) * run.lr / 2)
  for key, name in (('eigenvalues', 'sharpness'), ('eval_eigenvalues', 'sharpness_eval')):
    _, lam = run.series(f'probe/top_eigenvalues/{key}')
    if lam.ndim == 2 and len(lam):
      out[name] = f'{_fmt(lam[0, 0])} -> {_fmt(lam[-1, 0])}'
  return out


def markdown(runs: list[Run]) -> str:
  """A markdown table of ``row`` for every run, and a legend of its columns."""
  rows = [row(r) for r in runs]
  cols = [c for c, _ in COLUMNS if any(r.get(c) for r in rows)]
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(r.get(c, '') for c in cols) + ' |' for r in rows]
  lines += [''] + [f'- `{c}`: {what}' for c, what in COLUMNS if c in cols]
  return '\n'.join(lines) + '\n'
