"""Loss surfaces: the loss on 1-D and 2-D slices through params (Li et al. 2018).

A *direction* is a pytree like params. Several directions travel as one stacked pytree
whose leaves have a leading [num] axis: the layout of ``top_eigenvalues(...).eigenvectors``,
so eigenvectors, ``random_directions`` and ``eigen_directions`` pass straight to
``loss_surface``. ``gradient_direction`` and ``interpolation_direction`` give one
unstacked direction; ``loss_surface`` takes a list mixing both forms.

BatchNorm mode is the caller's: ``loss_fn`` with batch statistics (train mode, the
landscape SGD descends) or with running averages (eval mode, what loss-landscape plots
with ``net.eval()``) are different functions of params, with different surfaces.
"""

from typing import Literal, Sequence

import jax
import jax.numpy as jnp

from bnjax.probes._common import (
  DEFAULT_PRECISION,
  Block,
  LossFn,
  Params,
  assumed_backend,
  check_inputs,
  check_params,
  leaf_paths,
  map_in_batches,
  result,
  select_leaves,
  tree_norm,
  with_precision,
)
from bnjax.probes.convolutions import for_loops

Normalize = Literal['filter', 'layer', 'unit'] | None
NORMALIZE = ('filter', 'layer', 'unit', None)
_TINY = 1e-10  # loss-landscape's guard against a zero filter of the direction


def _leaf_names(params: Params) -> list[str]:
  return ['/'.join(map(str, p)) for p in leaf_paths(params)]


def _ignored(name: str, ignore: Sequence[str]) -> bool:
  return any(s.lower() in name.lower() for s in ignore)


def _check_ignore(ignore: Sequence[str]) -> tuple[str, ...]:
  # A lone string would otherwise be read as its characters ('bias' -> 'b', 'i', ...).
  return (ignore,) if isinstance(ignore, str) else tuple(ignore)


def _normalize_leaf(d: jax.Array, w: jax.Array, normalize: Normalize) -> jax.Array:
  """d rescaled like w: per filter (the last axis of a leaf with >= 2 axes; per leaf for
  scalars and vectors), per leaf, or not at all ('unit' is whole-direction, done later)."""
  if normalize in (None, 'unit'):
    return d
  if normalize == 'layer' or w.ndim < 2:
    return d * (jnp.linalg.norm(w) / (jnp.linalg.norm(d) + _TINY))
  axes = tuple(range(w.ndim - 1))  # Flax layout: [..., in, out], one filter per output unit
  w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axes))
  return d * (w_norm / (jnp.sqrt(jnp.sum(jnp.square(d), axes)) + _TINY))


def normalize_direction(
  direction: Params,
  params: Params,
  normalize: Normalize = 'filter',
  ignore: Sequence[str] = ('bias', 'norm'),
) -> Params:
  """One direction (a pytree like params) rescaled as Li et al. prescribe.

  normalize='filter': each filter d_j of a leaf with >= 2 axes is set to
  d_j ||w_j|| / ||d_j||, w_j the same filter of params; a filter is the slice for one
  output unit, the *last* axis in Flax layout (conv kernel [h, w, in, out], Dense
  [in, out]). Leaves with fewer axes (biases, BN scale and offset, scalars) are
  normalised per leaf; loss-landscape instead zeroes them ('biasbn') or copies w.
  'layer': every leaf to the norm of its params leaf. 'unit': the whole direction to
  norm 1. None: unchanged. ``ignore``: leaves whose key path ('conv1/bias',
  'BatchNorm_0/scale') contains any of these substrings, case-insensitively, become 0
  (loss-landscape's 'biasbn', by name instead of by rank).
  """
  if normalize not in NORMALIZE:
    raise ValueError(f'normalize must be one of {NORMALIZE}, got {normalize!r}')
  check_params(params)
  ignore = _check_ignore(ignore)
  if jax.tree.structure(direction) != jax.tree.structure(params):
    raise ValueError('direction and params have different tree structures')
  names = _leaf_names(params)
  out = [
    jnp.zeros_like(d) if _ignored(n, ignore) else _normalize_leaf(d, w, normalize)
    for n, d, w in zip(names, jax.tree.leaves(direction), jax.tree.leaves(params))
  ]
  out = jax.tree.unflatten(jax.tree.structure(params), out)
  if normalize == 'unit':
    norm = tree_norm(out)
    out = jax.tree.map(lambda d: d / jnp.where(norm > 0, norm, 1.0), out)
  return out


def random_directions(
  key: jax.Array,
  params: Params,
  num: int = 2,
  normalize: Normalize = 'filter',
  ignore: Sequence[str] = ('bias', 'norm'),
) -> Params:
  """``num`` Gaussian directions, each normalised by ``normalize_direction``.

  Returns one stacked pytree like params with a leading [num] axis on every leaf (the
  layout ``loss_surface`` and ``top_eigenvalues(...).eigenvectors`` use). The defaults
  are Li et al.'s filter normalisation with biases and normaliser parameters ignored
  (zero), their 'biasbn' choice for BN networks. Directions are independent draws
  (one key per leaf; for num directions, one [num, ...] draw per leaf).
  """
  if num < 1:
    raise ValueError(f'num must be >= 1, got {num}')
  check_params(params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  draws = treedef.unflatten(
    [jax.random.normal(k, (num, *w.shape), jnp.result_type(w)) for k, w in zip(keys, leaves)]
  )
  return jax.vmap(lambda d: normalize_direction(d, params, normalize, ignore))(draws)


@with_precision
def gradient_direction(
  loss_fn: LossFn, params: Params, normalize: Normalize = None, ignore: Sequence[str] = ()
) -> Params:
  """g = grad loss_fn(params) as one (unstacked) direction, normalised as asked.

  normalize=None keeps g itself: coordinate t is then L(params + t g), and t = -eta is a
  gradient step of size eta. 'filter' / 'layer' / 'unit' as in ``normalize_direction``
  (e.g. 'filter' to plot against a filter-normalised random direction on one scale).
  """
  check_inputs(loss_fn, params)
  return normalize_direction(jax.grad(loss_fn)(params), params, normalize, ignore)


def interpolation_direction(params_a: Params, params_b: Params) -> Params:
  """params_b - params_a: ``loss_surface(loss_fn, params_a, it, grid)`` with grid from 0
  to 1 runs from params_a (0) to params_b (1); beyond, it extrapolates."""
  if jax.tree.structure(params_a) != jax.tree.structure(params_b):
    raise ValueError('params_a and params_b have different tree structures')
  check_params(params_a)
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(f'leaf shapes differ: {jnp.shape(a)} and {jnp.shape(b)}')
  return jax.tree.map(jnp.subtract, params_b, params_a)


def eigen_directions(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  num: int = 2,
  tol: float = 1e-3,
  max_iterations: int = 100,
  block: Block | None = None,
  precision: str | None = DEFAULT_PRECISION,
) -> Params:
  """The top ``num`` Hessian eigenvectors (unit norm), stacked [num, ...] like params.

  The PyHessian tutorial's recipe: perturb along the top eigenvectors, params + a v1 +
  b v2. ``probes.top_eigenvalues`` computes them (Lanczos to ``tol``; check its
  ``converged`` by calling it directly when that matters: this is the same call, its
  ``.eigenvectors``). With ``block``, the eigenvectors of that block's diagonal Hessian
  block, zero on every other leaf.
  """
  from bnjax import probes  # pylint: disable=g-import-not-at-top  (the package imports us)

  check_params(params)
  pairs = probes.top_eigenvalues(
    loss_fn,
    params,
    key,
    k=num,
    tol=tol,
    max_iterations=max_iterations,
    block=block,
    precision=precision,
  )
  if block is None:
    return pairs.eigenvectors
  leaves, treedef = jax.tree.flatten(params)
  names = _leaf_names(params)
  out = [jnp.zeros((num, *jnp.shape(w)), jnp.result_type(w)) for w in leaves]
  for i in select_leaves(params, block):  # restrict's keys: the leaf path joined by '/'
    out[i] = pairs.eigenvectors[names[i]]
  return treedef.unflatten(out)


@result
class Surface:
  loss: jax.Array  # [n] or [n, m]: L(params + a_i d1 (+ b_j d2))
  grid: tuple[jax.Array, ...]  # ([n],) or ([n], [m]): the coordinates a (and b)
  center_loss: jax.Array  # [] L(params)


def _stacked(params: Params, directions) -> Params:
  """directions as one stacked pytree [k, ...]: from stacked, unstacked, or a list of them."""
  structure = jax.tree.structure(params)
  if jax.tree.structure(directions) == structure:
    rank = [
      jnp.ndim(d) - jnp.ndim(w)
      for d, w in zip(jax.tree.leaves(directions), jax.tree.leaves(params))
    ]
    if set(rank) == {0}:
      return jax.tree.map(lambda d: d[None], directions)
    if set(rank) == {1}:
      return directions
    raise ValueError(
      'every direction leaf needs the shape of its params leaf, with or '
      f'without one leading axis; rank differences {sorted(set(rank))}'
    )
  if isinstance(directions, (list, tuple)) and directions:
    parts = [_stacked(params, d) for d in directions]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
  raise ValueError(
    'directions must be a pytree like params (optionally stacked on a '
    'leading axis) or a list of them'
  )


def _grid_axes(grid, k: int, dtype) -> tuple[jax.Array, ...]:
  """grid as k 1-D coordinate arrays: [n] (every direction) or a sequence of k arrays."""
  if isinstance(grid, (list, tuple)):
    axes = tuple(jnp.asarray(g, dtype) for g in grid)
  else:
    axes = (jnp.asarray(grid, dtype),) * k
  if len(axes) != k or any(a.ndim != 1 or a.size == 0 for a in axes):
    raise ValueError(
      f'grid must be a non-empty 1-D array or {k} of them, one per direction; '
      f'got shapes {[a.shape for a in axes]}'
    )
  return axes


def default_batch_size() -> int:
  """Grid points per step of the mapped loop (vmapped together). On CPU one point at a
  time: vmapping turns every convolution into a grouped one (the kernel differs per
  point), XLA:CPU's slow path. benchmarks/loss_surface.py (VGG-11 BN, width 0.25, batch
  32, 21 x 21, this 2-core CPU): 1.00x the faster one-by-one loop at 1, 1.41x at 2,
  1.64x at 4. On GPU and TPU (not measured) a few points at once fill the device."""
  return 1 if assumed_backend() == 'cpu' else 8


@with_precision
def loss_surface(
  loss_fn: LossFn, params: Params, directions, grid, batch_size: int | None = None
) -> Surface:
  """The loss on a 1-D or 2-D slice: L(params + a d1) or L(params + a d1 + b d2).

  directions: 1 or 2 directions (stacked [k, ...], unstacked, or a list of them; see the
  module docstring). grid: the coordinates, a 1-D array [n] (used for every direction)
  or one 1-D array per direction ([n], [m]). Returns ``.loss`` [n] or [n, m] with
  ``loss[i, j]`` at (grid[0][i], grid[1][j]), ``.grid`` the coordinate arrays and
  ``.center_loss`` L(params) (computed apart, also when 0 is not on the grid).
  One compiled program: a lax.map over the n m points, ``batch_size`` of them vmapped
  per step (None: ``default_batch_size``), so a 21 x 21 grid traces one loss, not 441.
  On CPU the model's convolutions run in their loop-safe form (``for_loops``).
  """
  check_inputs(loss_fn, params)
  d = _stacked(params, directions)
  k = jax.tree.leaves(d)[0].shape[0]
  if k not in (1, 2):
    raise ValueError(f'loss_surface takes 1 or 2 directions, got {k}')
  dtype = jnp.result_type(*jax.tree.leaves(params))
  axes = _grid_axes(grid, k, dtype)
  mesh = jnp.meshgrid(*axes, indexing='ij')
  points = jnp.stack([m.reshape(-1) for m in mesh], axis=-1)  # [n m, k]
  mapped_loss = for_loops(loss_fn)

  def at(c):
    shifted = jax.tree.map(lambda w, v: w + sum(c[i] * v[i] for i in range(k)), params, d)
    return mapped_loss(shifted)

  batch_size = default_batch_size() if batch_size is None else batch_size
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  losses = map_in_batches(at, points, batch_size)
  return Surface(losses.reshape(mesh[0].shape), axes, loss_fn(params))
