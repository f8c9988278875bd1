"""Helpers every probe shares: input checks, precision, pytree arithmetic, key paths."""

import contextlib
import dataclasses
import functools
import inspect
import os
from typing import Any, Callable, Hashable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Params = Any
LossFn = Callable[[Params], jax.Array]
KeyPath = tuple[Hashable, ...]
# A parameter block: a key path prefix, several prefixes, or a predicate on key paths.
Block = KeyPath | Sequence[KeyPath] | Callable[[KeyPath], bool]
# Several blocks, one result each: 'layers', a list of key paths, or a predicate on leaf paths.
Blocks = Literal['layers'] | Sequence[KeyPath] | Callable[[KeyPath], bool]

DEFAULT_PRECISION = 'highest'


ASSUME_BACKEND = 'BNJAX_ASSUME_BACKEND'


def assumed_backend() -> str:
  """The backend whose code paths the probes takes: ``$BNJAX_ASSUME_BACKEND`` when set (e.g.
  'tpu', so that a test or ``benchmarks/accelerator.py --force-accelerator-paths`` runs an
  accelerator's choices on a CPU), else JAX's default backend. Read at each call.
  (bnjax.models.common.assumed_backend reads the same variable.)"""
  return os.environ.get(ASSUME_BACKEND) or jax.default_backend()


def result(cls):
  """A frozen dataclass registered as a pytree, for probe results."""
  return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


def precision_scope(precision: str | None):
  """Matmul/conv precision while a probe traces (None: leave the caller's setting)."""
  if precision is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(precision)


def with_precision(fn):
  """Runs ``fn`` under ``precision_scope(precision)``; ``precision`` is a keyword of fn."""

  @functools.wraps(fn)
  def wrapped(*args, precision: str | None = DEFAULT_PRECISION, **kwargs):
    with precision_scope(precision):
      return fn(*args, **kwargs)

  return wrapped


def _is_array(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex))


def check_params(params: Params) -> None:
  """Clear one-line errors for a params pytree the probes cannot differentiate: no leaves,
  a leaf that is not an array (a whole Equinox module, with its activation functions),
  or a leaf that is not floating point (an integer step counter)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if not leaves:
    raise ValueError('params has no array leaves')
  for path, leaf in leaves:
    if not _is_array(leaf):
      raise TypeError(
        f'params has a non-array leaf at {jax.tree_util.keystr(path)} '
        f'({type(leaf).__name__}): pass only the arrays, e.g. '
        'eqx.partition(model, eqx.is_array)[0], and recombine them in loss_fn'
      )
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f'params leaf {jax.tree_util.keystr(path)} has dtype {dtype}; '
        'probes differentiate, so every leaf must be floating point '
        '(keep integer state out of params, e.g. close over it in loss_fn)'
      )


def check_inputs(loss_fn: LossFn, params: Params, name: str = 'loss_fn') -> None:
  """Clear errors for the inputs a probe cannot use (checked at trace time, no compute)."""
  check_params(params)
  out = jax.eval_shape(loss_fn, params)
  if not hasattr(out, 'shape') or out.shape != ():
    shape = getattr(out, 'shape', type(out).__name__)
    raise ValueError(f'{name} must return a scalar, got {shape}')
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(f'{name} must return a floating scalar, got {out.dtype}')


def check_num_samples(num_samples: int) -> None:
  """At least 2 random samples, for a standard error (Hutchinson, SLQ's probes)."""
  if num_samples < 2:
    raise ValueError(f'num_samples must be >= 2 for a standard error, got {num_samples}')


def tree_vdot(a, b) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(a) -> jax.Array:
  return jnp.sqrt(tree_vdot(a, a))


def tree_axpy(alpha, x, y):
  """alpha * x + y."""
  return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def rademacher_like(key: jax.Array, params: Params):
  """Independent +-1 entries in a pytree like params (each leaf's shape and dtype)."""
  return _one_draw_like(jax.random.rademacher, key, params)


def normal_like(key: jax.Array, params: Params):
  """Independent standard normal entries in a pytree like params."""
  return _one_draw_like(jax.random.normal, key, params)


def _one_draw_like(sample, key, params):
  """sample(key, [n], dtype) for all n entries of params at once, cut into its leaves.

  One draw, not one per leaf: each draw is a random-bits program of its own, and XLA:CPU
  compiles each of its fusions separately (the top eigenvalues of the tests' 10-leaf BN
  MLP: 294 fusions, 1.5 s, against 194 and 1.1 s with one draw).
  """
  flat, unravel = ravel_pytree(params)  # under jit, flat's concatenation is dead code
  return unravel(sample(key, flat.shape, flat.dtype))


def map_in_batches(f, xs, batch_size: int):
  """lax.map of f over xs, ``batch_size`` at a time vmapped.

  ``lax.map(..., batch_size=1)`` still vmaps (over a size-1 axis), which turns every
  convolution whose kernel depends on the mapped value into a grouped convolution, a
  slow path on XLA:CPU; batch_size 1 therefore takes a plain sequential lax.map.
  """
  if batch_size == 1:
    return jax.lax.map(f, xs)
  return jax.lax.map(f, xs, batch_size=batch_size)


# ------------------------------------------------------------------------- key paths
def plain_path(path) -> KeyPath:
  """A jax key path as plain keys: (DictKey('conv1'), DictKey('kernel')) -> ('conv1', 'kernel')."""
  out = []
  for k in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
    else:
      out.append(str(k))
  return tuple(out)


def leaf_paths(params: Params) -> list[KeyPath]:
  return [plain_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def select_leaves(params: Params, block: Block) -> list[int]:
  """Indices (in tree_leaves order) of the leaves that ``block`` names. Raises if none."""
  paths = leaf_paths(params)
  if callable(block):
    chosen = [i for i, p in enumerate(paths) if block(p)]
  else:
    prefixes = [tuple(block)] if _is_path(block) else [tuple(b) for b in block]
    chosen = [i for i, p in enumerate(paths) if any(p[: len(q)] == q for q in prefixes)]
    missing = [q for q in prefixes if not any(p[: len(q)] == q for p in paths)]
    if missing:
      raise KeyError(
        f'no parameters under {missing}; leaves are {paths[:8]}{" ..." if len(paths) > 8 else ""}'
      )
  if not chosen:
    raise KeyError('the block selects no parameters')
  return chosen


def _is_path(block) -> bool:
  return isinstance(block, tuple) and all(not isinstance(k, (tuple, list)) for k in block)


def restrict(loss_fn: LossFn, params: Params, block: Block) -> tuple[LossFn, dict[str, jax.Array]]:
  """The loss as a function of one block of parameters, the rest held at ``params``.

  Returns (block_loss_fn, block_params) with block_params = {'a/b/c': leaf}; any probe
  applied to them gives that block's version (e.g. the top eigenvalue of the Hessian's
  diagonal block).
  """
  leaves, treedef = jax.tree.flatten(params)
  paths = leaf_paths(params)
  chosen = select_leaves(params, block)
  names = ['/'.join(map(str, paths[i])) for i in chosen]
  block_params = {n: leaves[i] for n, i in zip(names, chosen)}

  def block_loss_fn(bp):
    new = list(leaves)
    for n, i in zip(names, chosen):
      new[i] = bp[n]
    return loss_fn(treedef.unflatten(new))

  return block_loss_fn, block_params


# ------------------------------------------------------------------- per-block results
def block_name(path: KeyPath) -> str:
  """A key path as the string that names its block: ('dense3', 'kernel') -> 'dense3/kernel'."""
  return '/'.join(map(str, path))


def _layer(path: KeyPath) -> KeyPath:
  """The layer a leaf belongs to: its path minus the last key (a root leaf: its own)."""
  return path[:-1] if len(path) > 1 else path


def _in_layer(layer: KeyPath, path: KeyPath) -> bool:
  return _layer(path) == layer


def named_blocks(params: Params, blocks: Blocks) -> dict[str, Block]:
  """The blocks ``blocks=`` names, as {name: block} in leaf order.

  'layers': the leaves grouped by their key path minus its last key, so each group holds
  one module's own parameters: Flax's params['Conv_0'] ('Conv_0': kernel and bias),
  params['Block_0']['BatchNorm_0'] ('Block_0/BatchNorm_0'), an Equinox MLP's
  layers[0] ('layers/0'); a leaf directly at the root ({'w1': array}) is a layer of its
  own ('w1'). A group holds only its own leaves, never those of a submodule. A list of
  key paths: one block per path, every leaf under it (as ``block=`` takes it), named by
  the path. A predicate on leaf paths: one block per leaf it accepts, named by the
  leaf's path ('dense3/kernel'). (``block=`` with a predicate is one block of all the
  leaves it accepts.)
  """
  check_params(params)
  paths = leaf_paths(params)
  if isinstance(blocks, str):
    if blocks != 'layers':
      raise ValueError(
        f"blocks must be 'layers', a list of key paths or a predicate, got {blocks!r}"
      )
    layers = dict.fromkeys(_layer(p) for p in paths)
    return {block_name(g): functools.partial(_in_layer, g) for g in layers}
  if callable(blocks):
    chosen = [p for p in paths if blocks(p)]
    if not chosen:
      raise KeyError('the blocks predicate accepts no leaf path')
    return {block_name(p): p for p in chosen}
  blocks = [blocks] if _is_path(blocks) else list(blocks)
  if not blocks or not all(_is_path(b) for b in blocks):
    raise ValueError(
      "blocks must be 'layers', a predicate on leaf paths or a list of key "
      f"paths (tuples, e.g. [('dense1',), ('dense2', 'kernel')]), got {blocks!r}"
    )
  names = [block_name(b) for b in blocks]
  if len(set(names)) < len(names):
    raise ValueError(f'blocks names a block twice: {names}')
  for b in blocks:
    select_leaves(params, b)  # raises for a path with no parameters under it
  return dict(zip(names, blocks))


def per_block(probe):
  """Gives ``probe`` (loss_fn, params, key, ..., block=, blocks=) its ``blocks=``.

  blocks=None: the probe itself. Otherwise {name: result} over ``named_blocks``: the
  probe with ``block=`` that block and key ``jax.random.fold_in(key, i)``, i the block's
  position, each on its restricted operator, all traced into the caller's one program.
  """
  signature = inspect.signature(probe)

  @functools.wraps(probe)
  def wrapped(*args, **kwargs):
    arguments = signature.bind(*args, **kwargs).arguments
    blocks = arguments.pop('blocks', None)
    if blocks is None:
      return probe(**arguments)
    if arguments.get('block') is not None:
      raise ValueError('pass block= (one block) or blocks= (a result per block), not both')
    named = named_blocks(arguments['params'], blocks)
    key = arguments['key']
    return {
      name: probe(**dict(arguments, key=jax.random.fold_in(key, i), block=block))
      for i, (name, block) in enumerate(named.items())
    }

  return wrapped
