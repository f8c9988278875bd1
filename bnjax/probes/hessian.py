"""Hessian probes: products, extreme eigenpairs, trace and spectral density.

Every function takes ``loss_fn(params) -> scalar`` and a params pytree. Call them inside
your own ``jax.jit`` with params and batch as arguments of the jitted function: a batch
that ``loss_fn`` closes over outside any jit is baked into the program as a constant.
"""

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from matfree import decomp

from bnjax.probes._common import (Block, LossFn, Params, check_inputs, map_in_batches, normal_like,
                                  rademacher_like, restrict, result, tree_norm, tree_vdot,
                                  with_precision)
from bnjax.probes.convolutions import for_loops


def _hvp(loss_fn: LossFn, params: Params, v: Params) -> Params:
  # Forward-over-reverse: one forward-mode pass through the gradient computation.
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _hvp_operator(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
  # Undecorated, for the probes built on it: they pass their own precision scope down.
  # Its products run inside loops: on CPU, convolutions in a loop-safe form (for_loops).
  _, linear_hvp = jax.linearize(jax.grad(for_loops(loss_fn)), params)
  return linear_hvp


Operator = Literal['hessian', 'ggn']


@dataclasses.dataclass(frozen=True)
class SplitLoss:
  """loss_fn(params) = loss_of_outputs(outputs_fn(params)), split at the network's outputs.

  Use it wherever a ``loss_fn`` goes; probes with ``operator='ggn'`` need the split to
  form the Gauss-Newton matrix J^T H_out J (J = d outputs / d params).
  """
  outputs_fn: Callable[[Params], jax.Array]
  loss_of_outputs: Callable[[jax.Array], jax.Array]

  def __call__(self, params: Params) -> jax.Array:
    return self.loss_of_outputs(self.outputs_fn(params))


def _block_operator(loss_fn: LossFn, params: Params, block: Block | None,
                    operator: Operator = 'hessian'):
  """(params, v -> M v) for M the Hessian or the GGN, whole or ``block``'s diagonal
  block: the common start of every probe that multiplies by M many times."""
  if operator not in ('hessian', 'ggn'):
    raise ValueError(f"operator must be 'hessian' or 'ggn', got {operator!r}")
  if operator == 'ggn' and not isinstance(loss_fn, SplitLoss):
    raise TypeError("operator='ggn' needs loss_fn=probes.SplitLoss(outputs_fn, loss_of_outputs): "
                    f'the GGN is formed at the outputs; got {type(loss_fn).__name__}')
  if block is not None and operator == 'ggn':
    outputs_fn, params = restrict(loss_fn.outputs_fn, params, block)
    loss_fn = SplitLoss(outputs_fn, loss_fn.loss_of_outputs)
  elif block is not None:
    loss_fn, params = restrict(loss_fn, params, block)
  check_inputs(loss_fn, params)
  if operator == 'ggn':  # _hvp_operator makes its convolutions loop-safe, as for H v
    loss_fn = ggn_loss(loss_fn.outputs_fn, loss_fn.loss_of_outputs, params)
  return params, _hvp_operator(loss_fn, params)


def _check_num_samples(num_samples: int) -> None:
  if num_samples < 2:
    raise ValueError(f'num_samples must be >= 2 for a standard error, got {num_samples}')


@with_precision
def hvp(loss_fn: LossFn, params: Params, v: Params) -> Params:
  """Exact Hessian-vector product H v, H = d^2 loss / d params^2; a pytree like params."""
  check_inputs(loss_fn, params)
  return _hvp(loss_fn, params, v)


@with_precision
def hvp_operator(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
  """The map v -> H v at fixed ``params``, for many products (Lanczos, Hutchinson).

  The gradient's forward and backward passes run once (``jax.linearize``); each product
  then costs only the tangent passes: on VGG-11 with BN, batch 128, this CPU, 1.5x a
  loss-and-gradient per product against 2.2-2.3x for a standalone ``hvp``. Use it inside
  the same jitted function; it holds the gradient's intermediates while it lives. On the
  CPU backend the model's convolutions run in a form fast inside loops
  (``probes.convolutions_for_loops``).
  """
  check_inputs(loss_fn, params)
  return _hvp_operator(loss_fn, params)


@with_precision
def gnvp(outputs_fn: Callable[[Params], jax.Array], loss_of_outputs: Callable[[jax.Array], jax.Array],
         params: Params, v: Params) -> Params:
  """Gauss-Newton-vector product G v = J^T H_out J v, J = d outputs / d params.

  loss = loss_of_outputs(outputs_fn(params)); H_out is the Hessian of loss_of_outputs at
  the outputs (positive semi-definite for a convex loss such as cross-entropy).
  """
  check_inputs(lambda p: loss_of_outputs(outputs_fn(p)), params)
  outputs, jvp_fn = jax.linearize(outputs_fn, params)  # one forward pass for J and J^T
  hjv = jax.jvp(jax.grad(loss_of_outputs), (outputs,), (jvp_fn(v),))[1]
  (gv,) = jax.linear_transpose(jvp_fn, params)(hjv)
  return gv


def ggn_loss(outputs_fn: Callable[[Params], jax.Array],
             loss_of_outputs: Callable[[jax.Array], jax.Array], params: Params) -> LossFn:
  """A loss whose Hessian at ``params`` is the Gauss-Newton matrix G = J^T H_out J.

  loss(p) = loss_of_outputs(f(params) + J (p - params)), the loss of the outputs
  linearised at ``params``: its gradient at ``params`` is the true one and its Hessian
  the GGN (positive semi-definite for a convex loss_of_outputs such as cross-entropy).
  Hand it to any probe (top_eigenvalues, hessian_trace_hutchpp, spectral_density,
  hessian_diagonal, ...) to get the GGN version; evaluate those probes at ``params``.
  """
  outputs, jvp_fn = jax.linearize(outputs_fn, params)
  difference = lambda p: jax.tree.map(jnp.subtract, p, params)
  return lambda p: loss_of_outputs(outputs + jvp_fn(difference(p)))


@with_precision
def directional_curvature(loss_fn: LossFn, params: Params, v: Params,
                          block: Block | None = None) -> jax.Array:
  """v^T H v / ||v||^2, the curvature along v (with v = grad: the paper's quadratic form).

  With ``block``, v is a block's parameters (as ``restrict`` returns them) and H that
  block's diagonal block of the Hessian.
  """
  if block is not None:
    loss_fn, params = restrict(loss_fn, params, block)
  check_inputs(loss_fn, params)
  return tree_vdot(v, _hvp(loss_fn, params, v)) / tree_vdot(v, v)


@result
class Eigenpairs:
  eigenvalues: jax.Array  # [k], descending for 'largest', ascending for 'smallest'
  eigenvectors: Params  # params-like, each leaf with a leading k axis, unit norm
  residuals: jax.Array  # [k], ||H v - lambda v|| (Lanczos estimate)
  converged: jax.Array  # [k] bool, residual <= tol * |lambda|
  num_iterations: jax.Array  # [] int32, Hessian-vector products used


def _lanczos(apply_h, v0, num_iterations):
  """Lanczos with full reorthogonalisation (matfree): Q [m, ...], T [m, m], ||r||."""
  n = sum(x.size for x in jax.tree.leaves(v0))
  m = min(num_iterations, n)
  # matfree compiles the loop as lax.fori_loop, closure-converts the matvec, and
  # reorthogonalises against every Lanczos vector: the well-kept version of what we need.
  tridiag = decomp.tridiag_sym(m, reortho='full', custom_vjp=False, materialize=True)
  out = tridiag(apply_h, v0)
  return out.Q_tall, out.J_small, tree_norm(out.residual)


def _ritz(alpha, beta, m, k: int, which: str):
  """The k extreme Ritz pairs of the leading m x m block of T = tridiag(beta, alpha, beta).

  alpha [M], beta [M] (beta[i] couples i and i+1); m may be traced. The unused block is
  decoupled and its diagonal set beyond the active block's Gershgorin interval, so its
  eigenvalues never rank among the k wanted. Returns theta [k], S [M, k], with rows of S
  past m zero.
  """
  size = alpha.shape[0]
  active = jnp.arange(size) < m
  b = jnp.where(jnp.arange(size) < m - 1, beta, 0.0)
  radius = jnp.abs(b) + jnp.abs(jnp.concatenate([jnp.zeros(1, b.dtype), b[:-1]]))
  lo = jnp.min(jnp.where(active, alpha - radius, jnp.inf))
  hi = jnp.max(jnp.where(active, alpha + radius, -jnp.inf))
  pad = lo - (hi - lo) - 1.0 if which == 'largest' else hi + (hi - lo) + 1.0
  t = jnp.diag(jnp.where(active, alpha, pad)) + jnp.diag(b[:-1], 1) + jnp.diag(b[:-1], -1)
  theta, s = jnp.linalg.eigh(t)  # ascending
  idx = jnp.arange(k) if which == 'smallest' else size - 1 - jnp.arange(k)
  return theta[idx], s[:, idx]


_BLOCK = 4  # basis rows per matmul in _project_out


def _block_rows(a, i):
  return jax.lax.dynamic_slice_in_dim(a, i * _BLOCK, _BLOCK)


def _sum_over_used_blocks(m, f, zero):
  """sum_i f(i) over the basis blocks (of _BLOCK rows) that hold rows 0..m.

  A loop over the used blocks only: the basis is allocated for max_iterations rows, and
  reading all of them every step made a VGG-11 Lanczos memory-bound. (One lax.cond per
  block instead compiled 2.5x slower at max_iterations=100.)
  """
  return jax.lax.fori_loop(0, m // _BLOCK + 1, lambda i, acc: acc + f(i), zero)


def _project_out(q, w, m):
  """w - Q^T Q w over rows 0..m of q [rows, n] (rows a multiple of _BLOCK)."""
  coeffs = jax.lax.fori_loop(
      0, m // _BLOCK + 1,
      lambda i, c: jax.lax.dynamic_update_slice_in_dim(c, _block_rows(q, i) @ w, i * _BLOCK, 0),
      jnp.zeros(q.shape[0], w.dtype))
  return w - _sum_over_used_blocks(m, lambda i: _block_rows(coeffs, i) @ _block_rows(q, i),
                                   jnp.zeros_like(w))


def _lanczos_to_tolerance(apply_h, v0, k: int, which: str, tol: float, max_iterations: int):
  """Lanczos with full reorthogonalisation that stops once the k wanted Ritz pairs all
  have residual <= tol |theta| (checked after every product), or at max_iterations.

  Our own loop, not matfree's: matfree's decompositions run a fixed number of steps,
  and stopping on residuals needs the Ritz pairs inside the loop. One lax.while_loop.
  Returns (theta [k], flat vectors [k, n], residuals [k], converged [k], iterations).
  """
  flat0, unravel = ravel_pytree(v0)
  n = flat0.size
  size = min(max_iterations, n)
  rows = -(-size // _BLOCK) * _BLOCK  # the basis padded to whole blocks
  matvec = lambda x: ravel_pytree(apply_h(unravel(x)))[0]
  dtype = flat0.dtype
  q0 = flat0 / jnp.linalg.norm(flat0)

  def ritz_check(alpha, beta, m):
    theta, s = _ritz(alpha, beta, m, k, which)
    residuals = jnp.abs(beta[jnp.maximum(m - 1, 0)] * s[jnp.maximum(m - 1, 0), :])
    return theta, s, residuals, residuals <= tol * jnp.abs(theta)

  def cond(carry):
    _, alpha, beta, m, done = carry
    return (m < size) & ~done

  def body(carry):
    q, alpha, beta, m, _ = carry
    w = matvec(q[m])
    alpha = alpha.at[m].set(jnp.vdot(q[m], w))
    # Full reorthogonalisation against rows 0..m, twice ("twice is enough": one
    # classical Gram-Schmidt pass can leave float32 components along the basis).
    w = _project_out(q, _project_out(q, w, m), m)
    b = jnp.linalg.norm(w)
    beta = beta.at[m].set(b)
    breakdown = b <= 10 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(alpha[m]), 1.0)
    nxt, grows = jnp.minimum(m + 1, size - 1), (m + 1 < size) & ~breakdown
    q = q.at[nxt].set(jnp.where(grows, w / jnp.where(breakdown, 1.0, b), q[nxt]))
    m = m + 1
    _, _, _, converged = ritz_check(alpha, beta, m)
    done = breakdown | ((m >= k) & jnp.all(converged))
    return q, alpha, beta, m, done

  q = jnp.zeros((rows, n), dtype).at[0].set(q0)
  init = (q, jnp.zeros(size, dtype), jnp.zeros(size, dtype), jnp.int32(0), jnp.bool_(False))
  q, alpha, beta, m, _ = jax.lax.while_loop(cond, body, init)
  theta, s, residuals, converged = ritz_check(alpha, beta, m)
  s = jnp.pad(s, ((0, rows - size), (0, 0)))  # [rows, k]
  vectors = _sum_over_used_blocks(m - 1, lambda i: _block_rows(s, i).T @ _block_rows(q, i),
                                  jnp.zeros((k, n), dtype))  # [k, n]
  return theta, vectors, unravel, residuals, converged & (jnp.arange(k) < m), m


@with_precision
def top_eigenvalues(loss_fn: LossFn, params: Params, key: jax.Array, k: int = 1,
                    num_iterations: int | None = None,
                    which: Literal['largest', 'smallest'] = 'largest',
                    block: Block | None = None, tol: float = 1e-4,
                    max_iterations: int = 100, operator: Operator = 'hessian') -> Eigenpairs:
  """The k extreme eigenpairs of the Hessian, by Lanczos from a random Gaussian start.

  By default Lanczos runs until every one of the k Ritz pairs has a residual
  ||H v - lambda v|| <= ``tol`` |lambda|, or ``max_iterations`` Hessian-vector products
  (then ``.converged`` says which pairs fell short). With ``num_iterations`` it runs
  exactly that many products (``.converged`` still reports against ``tol``).
  ``which='smallest'`` gives the most negative end. Memory: the Lanczos basis holds
  min(max_iterations, num_iterations) vectors the size of params. ``operator='ggn'``:
  the Gauss-Newton matrix's pairs instead (loss_fn a ``SplitLoss``), as in every
  probe below.
  Lanczos over power iteration (PyHessian): far fewer HVPs, k pairs at once; over
  ``lobpcg_standard``: no block of k matvecs per step.
  """
  if which not in ('largest', 'smallest'):
    raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
  steps = max_iterations if num_iterations is None else num_iterations
  if not 1 <= k <= steps:
    raise ValueError(f'need 1 <= k <= num_iterations (or max_iterations), got k={k}, {steps}')
  if not tol > 0:
    raise ValueError(f'tol must be > 0, got {tol}')
  params, apply_h = _block_operator(loss_fn, params, block, operator)
  v0 = normal_like(key, params)
  if num_iterations is None:
    theta, flat_vectors, unravel, residuals, converged, m = _lanczos_to_tolerance(
        apply_h, v0, k, which, tol, max_iterations)
    vectors = jax.vmap(unravel)(flat_vectors)
    return Eigenpairs(theta, vectors, residuals, converged, m)
  q, t, rnorm = _lanczos(apply_h, v0, num_iterations)
  theta, s = jnp.linalg.eigh(t)  # ascending
  idx = jnp.arange(k) if which == 'smallest' else jnp.arange(theta.shape[0] - 1, theta.shape[0] - 1 - k, -1)
  theta, s = theta[idx], s[:, idx]  # [k], [m, k]
  vectors = jax.tree.map(lambda qi: jnp.tensordot(s.T, qi, axes=1), q)
  residuals = rnorm * jnp.abs(s[-1, :])
  return Eigenpairs(theta, vectors, residuals, residuals <= tol * jnp.abs(theta),
                    jnp.int32(t.shape[0]))


@result
class TraceEstimate:
  estimate: jax.Array  # [] estimate of tr(H)
  stderr: jax.Array  # [] its standard error (of the random part)
  num_samples: jax.Array  # [] int32, random vectors used


@with_precision
def hessian_trace(loss_fn: LossFn, params: Params, key: jax.Array, num_samples: int = 100,
                  batch_size: int = 1, block: Block | None = None, rtol: float | None = None,
                  max_samples: int = 1000, operator: Operator = 'hessian') -> TraceEstimate:
  """tr(H) by Hutchinson's estimator with Rademacher vectors z: mean of z^T H z.

  ``num_samples`` HVPs; or, with ``rtol``, ``batch_size`` at a time until the standard
  error is at most rtol |estimate| (at least 2 batches, at most ``max_samples``; one
  lax.while_loop). ``batch_size`` HVPs are vmapped at a time (memory grows with it).
  """
  _check_num_samples(num_samples)
  params, apply_h = _block_operator(loss_fn, params, block, operator)

  def sample(k):
    z = rademacher_like(k, params)
    return tree_vdot(z, apply_h(z))

  if rtol is None:
    values = map_in_batches(sample, jax.random.split(key, num_samples), batch_size)
    return TraceEstimate(jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(num_samples),
                         jnp.int32(num_samples))
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
def hessian_trace_hutchpp(loss_fn: LossFn, params: Params, key: jax.Array,
                          num_products: int = 99, block: Block | None = None,
                          operator: Operator = 'hessian') -> TraceEstimate:
  """tr(H) by Hutch++ (Meyer, Musco, Musco, Woodruff 2021) in ``num_products`` HVPs.

  A third of the products sketch H's dominant range Q = orth(H S), whose trace
  tr(Q^T H Q) is computed exactly (another third); Hutchinson on the rest,
  (I - QQ^T) H (I - QQ^T), uses the last third. For a fast-decaying spectrum (a
  Hessian's, typically) the error is far below Hutchinson's at the same number of
  products. ``.stderr`` is the Hutchinson part's standard error (the sketched part is
  exact). Memory: 2 num_products/3 vectors the size of params.
  """
  third = num_products // 3
  if third < 2:
    raise ValueError(f'num_products must be >= 6 (three parts of >= 2), got {num_products}')
  params, apply_h = _block_operator(loss_fn, params, block, operator)
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
  return TraceEstimate(exact + jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(third),
                       jnp.int32(num_products))


@result
class DiagonalEstimate:
  estimate: Params  # params-like: the Hessian's diagonal, mean of z * (H z)
  stderr: Params  # params-like: its elementwise standard error


@with_precision
def hessian_diagonal(loss_fn: LossFn, params: Params, key: jax.Array,
                     num_samples: int = 100, block: Block | None = None,
                     operator: Operator = 'hessian') -> DiagonalEstimate:
  """diag(H) by Hutchinson's diagonal estimator: the mean over Rademacher z of z * (H z).

  Unbiased; element i's variance is sum_{j != i} H_ij^2 / num_samples.
  """
  _check_num_samples(num_samples)
  params, apply_h = _block_operator(loss_fn, params, block, operator)

  def sample(k):
    z = rademacher_like(k, params)
    return jax.tree.map(jnp.multiply, z, apply_h(z))

  values = jax.lax.map(sample, jax.random.split(key, num_samples))  # leading sample axis
  return DiagonalEstimate(
      jax.tree.map(lambda v: jnp.mean(v, 0), values),
      jax.tree.map(lambda v: jnp.std(v, 0, ddof=1) / jnp.sqrt(num_samples), values))


@result
class SpectralDensity:
  nodes: jax.Array  # [probes, num_iterations] Ritz values (eigenvalue locations)
  weights: jax.Array  # [probes, num_iterations] quadrature weights, summing to 1 overall
  num_probes: jax.Array  # [] int32, probes used (rows past it carry weight 0)
  trace_stderr: jax.Array  # [] standard error of the trace estimate n sum(w theta) (NaN: 1 probe)


@with_precision
def spectral_density(loss_fn: LossFn, params: Params, key: jax.Array, num_probes: int = 4,
                     num_iterations: int = 40, block: Block | None = None,
                     rtol: float | None = None, max_probes: int = 64,
                     operator: Operator = 'hessian') -> SpectralDensity:
  """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

  For each Rademacher probe v, Lanczos gives T = S diag(theta) S^T; the density is
  sum_probes sum_i (S_0i^2 / num_probes) delta(lambda - theta_i). Its moments are exact
  for polynomials of degree < 2 num_iterations: sum w theta = mean v^T H v / ||v||^2,
  an unbiased estimate of tr(H)/n. ``smooth_density`` puts it on a grid.

  ``num_probes`` probes (num_probes x num_iterations HVPs); or, with ``rtol``, probes
  until the trace estimate's standard error is at most rtol |estimate| (at least 2, at
  most ``max_probes``, rows [max_probes, num_iterations], one lax.while_loop). The
  probes' noise dominates SLQ's error (Ghorbani et al.), so that is where it stops.
  """
  if rtol is not None:
    _check_num_samples(max_probes)
  params, apply_h = _block_operator(loss_fn, params, block, operator)
  n = sum(x.size for x in jax.tree.leaves(params))

  def one_probe(k):
    _, t, _ = _lanczos(apply_h, rademacher_like(k, params), num_iterations)
    theta, s = jnp.linalg.eigh(t)
    return theta, jnp.square(s[0, :])  # weights of this probe sum to 1

  def density(nodes, weights, count):
    traces = n * jnp.sum(nodes * weights, axis=1)  # [rows], each probe's tr(H) estimate
    used = jnp.arange(nodes.shape[0]) < count
    mean = jnp.sum(jnp.where(used, traces, 0.0)) / count
    var = jnp.sum(jnp.where(used, (traces - mean)**2, 0.0)) / jnp.maximum(count - 1, 1)
    nodes = jnp.where(used[:, None], nodes, nodes[0])  # unused rows: inside the range, weight 0
    return SpectralDensity(nodes, jnp.where(used[:, None], weights, 0.0) / count,
                           jnp.int32(count), jnp.where(count > 1, jnp.sqrt(var / count), jnp.nan)), mean

  if rtol is None:
    nodes, weights = jax.lax.map(one_probe, jax.random.split(key, num_probes))
    return density(nodes, weights, num_probes)[0]
  if not rtol > 0:
    raise ValueError(f'rtol must be > 0, got {rtol}')
  keys = jax.random.split(key, max_probes)

  def cond(carry):
    nodes, weights, count = carry
    d, mean = density(nodes, weights, count)
    return (count < max_probes) & ((count < 2) | (d.trace_stderr > rtol * jnp.abs(mean)))

  def body(carry):
    nodes, weights, count = carry
    theta, w = one_probe(keys[count])
    return nodes.at[count].set(theta), weights.at[count].set(w), count + 1

  dtype = jnp.result_type(*jax.tree.leaves(params))
  rows = jnp.zeros((max_probes, min(num_iterations, n)), dtype)  # _lanczos caps at n
  nodes, weights, count = jax.lax.while_loop(cond, body, (rows, rows, jnp.int32(0)))
  return density(nodes, weights, count)[0]


def smooth_density(density: SpectralDensity, grid: jax.Array, sigma: float) -> jax.Array:
  """The density convolved with a Gaussian of width ``sigma`` on ``grid``: [len(grid)]."""
  nodes, weights = density.nodes.reshape(-1), density.weights.reshape(-1)
  z = (grid[:, None] - nodes[None, :]) / sigma
  return jnp.sum(weights * jnp.exp(-0.5 * z**2), axis=1) / (sigma * jnp.sqrt(2 * jnp.pi))
