"""Stochastic estimators: the trace and the diagonal of a curvature operator.

``hessian_trace`` is Hutchinson's estimator (to a fixed count or to a relative standard
error), ``hessian_trace_hutchpp`` Hutch++ (a sketched range exact, Hutchinson on the
rest), both -> ``TraceEstimate``; ``hessian_diagonal`` is Hutchinson's diagonal
estimator (-> ``DiagonalEstimate``). Each multiplies by the matrix
``operators.curvature_operator`` gives (``operator=`` 'hessian', 'ggn', 'ef', 'fisher'
or 'fisher_exact'; ``block=``) and reports a standard error for its random part; the
trace estimators also give one result per block (``blocks=``).
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bnjax.probes._common import (
  Block,
  Blocks,
  LossFn,
  Params,
  check_num_samples,
  map_in_batches,
  per_block,
  rademacher_like,
  result,
  tree_vdot,
  with_precision,
)
from bnjax.probes.operators import Operator, curvature_operator


@result
class TraceEstimate:
  estimate: jax.Array  # [] estimate of tr(H)
  stderr: jax.Array  # [] its standard error (of the random part)
  num_samples: jax.Array  # [] int32, random vectors used


@with_precision
@per_block
def hessian_trace(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  num_samples: int = 100,
  batch_size: int = 1,
  block: Block | None = None,
  rtol: float | None = None,
  max_samples: int = 1000,
  operator: Operator = 'hessian',
  blocks: Blocks | None = None,
) -> TraceEstimate | dict[str, TraceEstimate]:
  """tr(H) by Hutchinson's estimator with Rademacher vectors z: mean of z^T H z.

  ``num_samples`` HVPs; or, with ``rtol``, ``batch_size`` at a time until the standard
  error is at most rtol |estimate| (at least 2 batches, at most ``max_samples``; one
  lax.while_loop). ``batch_size`` HVPs are vmapped at a time (memory grows with it).
  ``blocks`` ('layers', a list of key paths, or a predicate on leaf paths; see
  ``probes.named_blocks``): a dict {block name: result}, each block's probe as with
  ``block=`` it and key fold_in(key, i) (i its position), all in one program.
  """
  del blocks  # per_block calls this once per block, with block=
  check_num_samples(num_samples)
  params, apply_h = curvature_operator(loss_fn, params, block, operator)

  def sample(k):
    z = rademacher_like(k, params)
    return tree_vdot(z, apply_h(z))

  if rtol is None:
    values = map_in_batches(sample, jax.random.split(key, num_samples), batch_size)
    return TraceEstimate(
      jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(num_samples), jnp.int32(num_samples)
    )
  if not rtol > 0 or max_samples < 2 * batch_size:
    raise ValueError(f'need rtol > 0 and max_samples >= 2 batch_size, got {rtol}, {max_samples}')

  def stats(total, total_sq, count):
    mean = total / count
    var = jnp.maximum(total_sq / count - mean**2, 0.0) * count / jnp.maximum(count - 1, 1)
    return mean, jnp.sqrt(var / count)

  def cond(carry):
    total, total_sq, count, _ = carry
    mean, stderr = stats(total, total_sq, count)
    enough = (count >= 2 * batch_size) & (stderr <= rtol * jnp.abs(mean))
    return (count + batch_size <= max_samples) & ~enough

  def body(carry):
    total, total_sq, count, k = carry
    k, sub = jax.random.split(k)
    values = jax.vmap(sample)(jax.random.split(sub, batch_size))
    return total + jnp.sum(values), total_sq + jnp.sum(values**2), count + batch_size, k

  zero = jnp.zeros((), jnp.result_type(*jax.tree.leaves(params)))
  total, total_sq, count, _ = jax.lax.while_loop(cond, body, (zero, zero, jnp.int32(0), key))
  mean, stderr = stats(total, total_sq, count)
  return TraceEstimate(mean, stderr, count)


@with_precision
@per_block
def hessian_trace_hutchpp(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  num_products: int = 99,
  block: Block | None = None,
  operator: Operator = 'hessian',
  blocks: Blocks | None = None,
) -> TraceEstimate | dict[str, TraceEstimate]:
  """tr(H) by Hutch++ (Meyer, Musco, Musco, Woodruff 2021) in ``num_products`` HVPs.

  A third of the products sketch H's dominant range Q = orth(H S), whose trace
  tr(Q^T H Q) is computed exactly (another third); Hutchinson on the rest,
  (I - QQ^T) H (I - QQ^T), uses the last third. For a fast-decaying spectrum (a
  Hessian's, typically) the error is far below Hutchinson's at the same number of
  products. ``.stderr`` is the Hutchinson part's standard error (the sketched part is
  exact). Memory: 2 num_products/3 vectors the size of params.
  ``blocks`` ('layers', a list of key paths, or a predicate on leaf paths; see
  ``probes.named_blocks``): a dict {block name: result}, each block's probe as with
  ``block=`` it and key fold_in(key, i) (i its position), all in one program.
  """
  del blocks  # per_block calls this once per block, with block=
  third = num_products // 3
  if third < 2:
    raise ValueError(f'num_products must be >= 6 (three parts of >= 2), got {num_products}')
  params, apply_h = curvature_operator(loss_fn, params, block, operator)
  flat, unravel = ravel_pytree(params)
  # Columns one HVP at a time (lax.map): the memory of one product, not of a third.
  hv = lambda cols: jax.lax.map(lambda c: ravel_pytree(apply_h(unravel(c)))[0], cols)
  k_s, k_g = jax.random.split(key)
  rademacher = lambda k: jax.random.rademacher(k, (third, flat.size), flat.dtype)
  q, _ = jnp.linalg.qr(hv(rademacher(k_s)).T)  # [n, third], orthonormal
  exact = jnp.trace(q.T @ hv(q.T).T)
  g = rademacher(k_g)
  g = g - (g @ q) @ q.T  # project out the sketched range
  samples = jnp.sum(g * hv(g), axis=1)
  return TraceEstimate(
    exact + jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(third), jnp.int32(num_products)
  )


@result
class DiagonalEstimate:
  estimate: Params  # params-like: the Hessian's diagonal, mean of z * (H z)
  stderr: Params  # params-like: its elementwise standard error


@with_precision
def hessian_diagonal(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  num_samples: int = 100,
  block: Block | None = None,
  operator: Operator = 'hessian',
) -> DiagonalEstimate:
  """diag(H) by Hutchinson's diagonal estimator: the mean over Rademacher z of z * (H z).

  Unbiased; element i's variance is sum_{j != i} H_ij^2 / num_samples.
  """
  check_num_samples(num_samples)
  params, apply_h = curvature_operator(loss_fn, params, block, operator)

  def sample(k):
    z = rademacher_like(k, params)
    return jax.tree.map(jnp.multiply, z, apply_h(z))

  values = jax.lax.map(sample, jax.random.split(key, num_samples))  # leading sample axis
  return DiagonalEstimate(
    jax.tree.map(lambda v: jnp.mean(v, 0), values),
    jax.tree.map(lambda v: jnp.std(v, 0, ddof=1) / jnp.sqrt(num_samples), values),
  )
