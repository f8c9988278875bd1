"""One number per run from its metrics: the measures numbers.md quotes and figures draw.

Each measure is a function run -> float (NaN when the run lacks what it needs); a group
summarises one as mean, min and max over its seeds (``over_seeds``). Medians are over
every probed step of the run (a diverged run: its finite values), so one number
summarises a curve the way the paper's figures are read by eye.
"""

import dataclasses
import re
import warnings

import numpy as np

from bnjax.plots.panels import layers_of_run
from bnjax.plots.runs import Group, Run

NAN = float('nan')


def finite_median(values: np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(np.median(values)) if values.size else NAN


def tail_mean(run: Run, key: str, n: int = 100) -> float:
  """Mean of the last ``n`` finite values of ``key`` (e.g. per-batch training accuracy)."""
  _, v = run.series(key)
  v = v[np.isfinite(v)]
  return float(np.mean(v[-n:])) if v.size else NAN


def last(run: Run, key: str, column: int | None = None) -> float:
  _, v = run.series(key)
  if not len(v):
    return NAN
  return float(v[-1] if column is None else v[-1][column])


def first(run: Run, key: str, column: int | None = None) -> float:
  _, v = run.series(key)
  if not len(v):
    return NAN
  return float(v[0] if column is None else v[0][column])


def landscape_row_stats(run: Run) -> dict[str, np.ndarray]:
  """Per probed step: loss band ratio max/min over eta, max gradient change, beta, loss."""
  steps, loss = run.series('probe/landscape/loss')
  if loss.ndim != 2:
    return {}
  _, diff = run.series('probe/landscape/grad_diff')
  _, beta = run.series('probe/landscape/beta')
  _, at_start = run.series('probe/landscape/loss_at_start')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    return {
      'step': steps,
      'loss_band': np.nanmax(loss, 1) / np.nanmin(loss, 1),
      'grad_pred': np.nanmax(diff, 1),
      'beta': beta,
      'loss': at_start,
    }


def landscape_median(run: Run, field: str) -> float:
  stats = landscape_row_stats(run)
  return finite_median(stats[field]) if stats else NAN


def beta_lr_2(run: Run) -> float:
  """Median effective beta x LR / 2: 1 at the edge of stability."""
  return landscape_median(run, 'beta') * run.lr / 2


def ics_median(run: Run, field: str, layer: int) -> float:
  """Median over probed steps of ICS ``field`` ('l2', 'cosine' or 'relative') at the
  ``layer``-th probed layer; 'relative' is ||G - G'|| / ||G||."""
  _, v = run.series('probe/ics/l2' if field == 'relative' else f'probe/ics/{field}')
  if v.ndim != 2 or layer >= v.shape[1]:
    return NAN
  v = v[:, layer]
  if field == 'relative':
    _, norm = run.series('probe/ics/grad_norm')
    if norm.ndim != 2:
      return NAN
    with np.errstate(all='ignore'):
      v = v / norm[:, layer]
  return finite_median(v)


def sharpness(run: Run, mode: str = 'train', which: str = 'last') -> float:
  """Top Hessian eigenvalue at the first or last probed step (BN in train or eval mode)."""
  key = 'probe/top_eigenvalues/' + ('eigenvalues' if mode == 'train' else 'eval_eigenvalues')
  return (last if which == 'last' else first)(run, key, 0)


def sharpness_lr_2(run: Run) -> float:
  """Top Hessian eigenvalue x LR / 2 at the last probed step: 1 at the edge of stability."""
  return sharpness(run) * run.lr / 2


def first_step_below(run: Run, threshold: float) -> float:
  """First step whose training loss is below ``threshold`` (NaN: never)."""
  steps, loss = run.series('train_loss')
  below = np.nonzero(loss < threshold)[0]
  return float(steps[below[0]]) if len(below) else NAN


def at_matched_loss(run: Run, target: float, field: str) -> float:
  """Landscape ``field`` at the first probed step whose loss (at theta_t, on its batch)
  is at most ``target``: the network compared at equal loss, not equal step."""
  stats = landscape_row_stats(run)
  if not stats:
    return NAN
  hit = np.nonzero(stats['loss'] <= target)[0]
  return float(stats[field][hit[0]]) if len(hit) else NAN


def weight_distance(run: Run, key: str = 'raw') -> float:
  """||W_T - W_0||_F / ||W_0||_F over all layers at the last probed step."""
  _, d = run.series(f'probe/weight_distance/{key}')
  _, n0 = run.series('probe/weight_distance/init_norm')
  if d.ndim != 2:
    return NAN
  return float(np.sqrt(np.sum(d[-1] ** 2) / np.sum(n0[-1] ** 2)))


def activation_var_range(run: Run, layer: int) -> float:
  """max / min over probed steps of one unit's batch variance at ``layer``."""
  _, v = run.series(f'probe/activations/layer{layer}/var')
  v = v[np.isfinite(v) & (v > 0)] if len(v) else v
  return float(v.max() / v.min()) if len(v) else NAN


def theorem_41_gap(run: Run) -> float:
  """Largest |lhs - rhs| / lhs of Theorem 4.1 over every probed layer, unit and step."""
  gaps = []
  for layer in layers_of_run(run, 'bn_theorems'):
    _, lhs = run.series(f'probe/bn_theorems/layer{layer}/grad_y_sq')
    _, rhs = run.series(f'probe/bn_theorems/layer{layer}/thm41_rhs')
    with np.errstate(all='ignore'):
      gaps.append(np.nanmax(np.abs(lhs - rhs) / np.abs(lhs)))
  return float(max(gaps)) if gaps else NAN


def theorem_42_min_slack(run: Run) -> float:
  """Smallest (bound - value) / |bound| of Theorem 4.2 over every probed layer, unit and
  step: >= 0 means the bound held everywhere it was measured."""
  slacks = []
  for layer in layers_of_run(run, 'bn_theorems'):
    _, curv = run.series(f'probe/bn_theorems/layer{layer}/curvature_y')
    _, bound = run.series(f'probe/bn_theorems/layer{layer}/thm42_rhs')
    with np.errstate(all='ignore'):
      slacks.append(np.nanmin((bound - curv) / np.abs(bound)))
  return float(min(slacks)) if slacks else NAN


@dataclasses.dataclass(frozen=True)
class Spread:
  """A measure over a group's seeds: mean, min, max and the count of finite values."""

  mean: float
  lo: float
  hi: float
  n: int  # seeds with a finite value
  total: int  # seeds in the group

  def text(self, digits: int = 3) -> str:
    """'mean [min, max]' (the value alone for one seed), with '(n of total seeds)' when
    some seeds have no value (never reached it, diverged); '' when none has it."""
    if not self.n:
      return ''
    text = fmt(self.mean, digits)
    if self.n > 1:
      text += f' [{fmt(self.lo, digits)}, {fmt(self.hi, digits)}]'
    return text + (f' ({self.n} of {self.total} seeds)' if self.n < self.total else '')


def over_seeds(group: Group, measure) -> Spread:
  """``measure(run)`` for every seed of ``group``, summarised."""
  values = np.asarray([measure(r) for r in group.runs], np.float64)
  total = len(values)
  values = values[np.isfinite(values)]
  if not values.size:
    return Spread(NAN, NAN, NAN, 0, total)
  return Spread(
    float(values.mean()), float(values.min()), float(values.max()), int(values.size), total
  )


def fmt(x: float, digits: int = 3) -> str:
  if x is None or not np.isfinite(x):
    return ''
  return f'{x:.{digits}g}'


# ------------------------------------------------- analyze results (bnjax.analyze)
LAYERS = 'layer_top_eigenvalues'  # analyze --probe=top_eigenvalues --blocks=layers --name=...
_WEIGHT_LAYER = re.compile(r'^(?!norm)[a-z_]*?(\d+)$')  # dense7, conv12: not norm7


def weight_layers(eigenvalues: dict) -> tuple[list[int], list[float]]:
  """(layer numbers, top eigenvalues) of the weight layers' blocks of one line's
  per-block ``eigenvalues`` ({block path: [k]}); normaliser blocks left out."""
  found = sorted(
    (int(m.group(1)), v[0]) for name, v in eigenvalues.items() if (m := _WEIGHT_LAYER.match(name))
  )
  return [k for k, _ in found], [v for _, v in found]
