"""loss_surface's directions and grid from the command line.

  --grid=LO:HI:N          1-D: N points from LO to HI along one direction
  --grid2=LO:HI:M         with it, 2-D: the second direction's M points
  --directions=SPEC[,SPEC]

SPEC is one direction (or, given alone, as many as the grid has axes):

  random[:NORMALIZE]   Gaussian, normalised per NORMALIZE (filter, the default; layer,
                       unit or none); biases and normaliser parameters zero (Li et al.'s
                       'biasbn'), ``probes.random_directions``. ``filter`` = random:filter.
  eigen                the top Hessian eigenvectors (unit norm), ``probes.eigen_directions``
  gradient[:NORMALIZE] the gradient at the checkpoint (default filter-normalised, biases
                       and normaliser parameters zero; ``none``: the raw gradient, where
                       coordinate -eta is an SGD step of size eta)
  interpolate:STEP     params(STEP) - params(this checkpoint): with a grid from 0 to 1 the
                       line from this checkpoint to checkpoint STEP (0: the initialisation)

Random draws come from ``--seed``'s key, the same at every checkpoint (each normalised
to that checkpoint's weights), so surfaces of one run are drawn along comparable slices.
"""

import dataclasses

import jax
import numpy as np

from bnjax import probes
from bnjax.analyze.table import AnalysisError

NORMALIZE = {'filter': 'filter', 'layer': 'layer', 'unit': 'unit', 'none': None}
IGNORE = ('bias', 'norm')  # random_directions' default: Li et al.'s 'biasbn'
KINDS = ('random', 'eigen', 'gradient', 'interpolate')


@dataclasses.dataclass(frozen=True)
class Spec:
  kind: str  # one of KINDS
  option: str | int | None = None  # NORMALIZE key, or interpolate's step


def parse_grid(text: str, flag: str = '--grid') -> tuple[float, float, int]:
  """'LO:HI:N' -> (LO, HI, N); AnalysisError in one line otherwise."""
  parts = text.split(':')
  try:
    lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    if len(parts) != 3 or n < 1 or not lo <= hi:
      raise ValueError
  except (ValueError, IndexError):
    raise AnalysisError(
      f'{flag}={text!r}: expected LO:HI:N with LO <= HI and N >= 1, e.g. -1:1:21'
    ) from None
  return lo, hi, n


def _parse_one(text: str) -> Spec:
  kind, _, option = text.partition(':')
  if kind == 'filter' and not option:
    return Spec('random', 'filter')
  if kind in ('random', 'gradient'):
    option = option or 'filter'
    if option not in NORMALIZE:
      raise AnalysisError(
        f'--directions {text!r}: normalisation must be one of {", ".join(NORMALIZE)}'
      )
    return Spec(kind, option)
  if kind == 'eigen' and not option:
    return Spec('eigen')
  if kind == 'interpolate' and option.isdigit():
    return Spec('interpolate', int(option))
  raise AnalysisError(
    f'--directions: unknown direction {text!r}; valid: filter, '
    'random[:filter|layer|unit|none], eigen, gradient[:filter|layer|unit|none], '
    'interpolate:STEP'
  )


def parse_directions(text: str, num_axes: int) -> list[Spec]:
  """One Spec per direction the grid needs (``num_axes``: 1 or 2)."""
  specs = [_parse_one(t) for t in text.split(',') if t]
  if len(specs) == 1 and specs[0].kind in ('random', 'eigen'):
    return specs * num_axes
  if len(specs) != num_axes:
    raise AnalysisError(
      f'--directions={text!r} gives {len(specs)} direction(s) for a '
      f'{num_axes}-D grid (--grid{" and --grid2" if num_axes == 2 else ""})'
    )
  return specs


def grid_axes(grids: list[tuple[float, float, int]]) -> list[np.ndarray]:
  return [np.linspace(lo, hi, n, dtype=np.float32) for lo, hi, n in grids]


def interpolation_step(specs: list[Spec]) -> int | None:
  """The checkpoint step the directions interpolate to, if any (one at most)."""
  steps = {s.option for s in specs if s.kind == 'interpolate'}
  if len(steps) > 1:
    raise AnalysisError(f'--directions interpolates to several steps {sorted(steps)}; one at most')
  return steps.pop() if steps else None


def build(specs: list[Spec], loss_fn, params, key: jax.Array, other=None) -> list:
  """The directions of ``specs`` at ``params`` (traced; ``other``: interpolate's params).

  Repeated random or eigen specs (one spec given for a 2-D grid) are drawn together: two
  independent random directions, or the top two eigenvectors.
  """
  kinds = [s.kind for s in specs]
  if len(specs) > 1 and len(set(specs)) == 1 and kinds[0] in ('random', 'eigen'):
    return [_stacked_directions(specs[0], loss_fn, params, key, len(specs))]
  out = []
  for i, spec in enumerate(specs):
    k = jax.random.fold_in(key, i)
    if spec.kind == 'gradient':
      norm = NORMALIZE[spec.option]
      out.append(probes.gradient_direction(loss_fn, params, norm, IGNORE if norm else ()))
    elif spec.kind == 'interpolate':
      out.append(probes.interpolation_direction(params, other))
    else:
      out.append(_stacked_directions(spec, loss_fn, params, k, 1))
  return out


def _stacked_directions(spec: Spec, loss_fn, params, key: jax.Array, num: int):
  if spec.kind == 'eigen':
    return probes.eigen_directions(loss_fn, params, key, num=num)
  return probes.random_directions(key, params, num, NORMALIZE[spec.option], IGNORE)


def settings(specs: list[Spec], grids: list[tuple[float, float, int]]) -> dict:
  """How the surface was taken, as the jsonl's settings record it."""
  return {
    'directions': [f'{s.kind}:{s.option}' if s.option is not None else s.kind for s in specs],
    'grid': [list(g) for g in grids],
  }
