"""Lanczos probes: extreme eigenpairs and the spectral density of a curvature operator.

``top_eigenvalues`` (-> ``Eigenpairs``) runs Lanczos with full reorthogonalisation, to a
residual tolerance or for a fixed number of products; ``spectral_density``
(-> ``SpectralDensity``) is stochastic Lanczos quadrature and ``smooth_density`` puts it
on a grid. The private helpers below are the Lanczos iterations and their Ritz pairs.
Each probe multiplies by the matrix ``operators.curvature_operator`` gives
(``operator=`` 'hessian', 'ggn', 'ef', 'fisher' or 'fisher_exact'; ``block=``), or gives one
result per block (``blocks=``).
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from matfree import decomp

from bnjax.probes._common import (
  Block,
  Blocks,
  LossFn,
  Params,
  check_num_samples,
  normal_like,
  per_block,
  rademacher_like,
  result,
  tree_norm,
  with_precision,
)
from bnjax.probes.operators import Operator, curvature_operator


@result
class Eigenpairs:
  eigenvalues: jax.Array  # [k], descending for 'largest', ascending for 'smallest'
  eigenvectors: Params  # params-like, each leaf with a leading k axis, unit norm
  residuals: jax.Array  # [k], ||H v - lambda v|| (Lanczos estimate)
  converged: jax.Array  # [k] bool, residual <= tol * |lambda|
  num_iterations: jax.Array  # [] int32, Hessian-vector products used


@result
class SpectralDensity:
  nodes: jax.Array  # [probes, num_iterations] Ritz values (eigenvalue locations)
  weights: jax.Array  # [probes, num_iterations] quadrature weights, summing to 1 overall
  num_probes: jax.Array  # [] int32, probes used (rows past it carry weight 0)
  trace_stderr: jax.Array  # [] standard error of the trace estimate n sum(w theta) (NaN: 1 probe)


@dataclasses.dataclass(frozen=True)
class _Wanted:
  """What Lanczos runs for: the k extreme Ritz pairs at end ``which``, each to residual
  <= tol |theta|, in at most max_iterations products."""

  k: int
  which: str  # 'largest' or 'smallest'
  tol: float
  max_iterations: int


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
  return _extreme_pairs(t, k, which)


def _extreme_pairs(t, k: int, which: str):
  """theta [k], S [m, k]: the k extreme eigenpairs of the symmetric t [m, m] (largest
  first, or smallest first), each column of S signed so that S[0] >= 0: its Ritz vector's
  inner product with the start vector (the basis's row 0) is non-negative. eigh's signs
  are arbitrary, and rounding (another device layout, say) could flip them."""
  theta, s = jnp.linalg.eigh(t)  # ascending
  idx = jnp.arange(k) if which == 'smallest' else t.shape[0] - 1 - jnp.arange(k)
  s = s[:, idx]
  return theta[idx], s * jnp.where(s[:1] < 0, -1.0, 1.0).astype(s.dtype)


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
    0,
    m // _BLOCK + 1,
    lambda i, c: jax.lax.dynamic_update_slice_in_dim(c, _block_rows(q, i) @ w, i * _BLOCK, 0),
    jnp.zeros(q.shape[0], w.dtype),
  )
  return w - _sum_over_used_blocks(
    m, lambda i: _block_rows(coeffs, i) @ _block_rows(q, i), jnp.zeros_like(w)
  )


def _lanczos_to_tolerance(apply_h, v0, wanted: _Wanted):
  """Lanczos with full reorthogonalisation that stops once the wanted.k Ritz pairs all
  have residual <= wanted.tol |theta| (checked after every product), or at
  wanted.max_iterations.

  Our own loop, not matfree's: matfree's decompositions run a fixed number of steps,
  and stopping on residuals needs the Ritz pairs inside the loop. One lax.while_loop.
  Returns (theta [k], flat vectors [k, n], unravel, residuals [k], converged [k],
  iterations).
  """
  k = wanted.k
  flat0, unravel = ravel_pytree(v0)
  n = flat0.size
  size = min(wanted.max_iterations, n)
  rows = -(-size // _BLOCK) * _BLOCK  # the basis padded to whole blocks
  matvec = lambda x: ravel_pytree(apply_h(unravel(x)))[0]
  dtype = flat0.dtype
  q0 = flat0 / jnp.linalg.norm(flat0)

  def ritz_check(alpha, beta, m):
    theta, s = _ritz(alpha, beta, m, k, wanted.which)
    residuals = jnp.abs(beta[jnp.maximum(m - 1, 0)] * s[jnp.maximum(m - 1, 0), :])
    return theta, s, residuals, residuals <= wanted.tol * jnp.abs(theta)

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
  vectors = _sum_over_used_blocks(
    m - 1, lambda i: _block_rows(s, i).T @ _block_rows(q, i), jnp.zeros((k, n), dtype)
  )  # [k, n]
  return theta, vectors, unravel, residuals, converged & (jnp.arange(k) < m), m


@with_precision
@per_block
def top_eigenvalues(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  k: int = 1,
  num_iterations: int | None = None,
  which: Literal['largest', 'smallest'] = 'largest',
  block: Block | None = None,
  tol: float = 1e-4,
  max_iterations: int = 100,
  operator: Operator = 'hessian',
  blocks: Blocks | None = None,
) -> Eigenpairs | dict[str, Eigenpairs]:
  """The k extreme eigenpairs of the Hessian, by Lanczos from a random Gaussian start.

  By default Lanczos runs until every one of the k Ritz pairs has a residual
  ||H v - lambda v|| <= ``tol`` |lambda|, or ``max_iterations`` Hessian-vector products
  (then ``.converged`` says which pairs fell short). With ``num_iterations`` it runs
  exactly that many products (``.converged`` still reports against ``tol``).
  Each eigenvector's sign makes its inner product with the start vector non-negative, so
  the same key gives the same vectors on any device layout.
  ``which='smallest'`` gives the most negative end. Memory: the Lanczos basis holds
  min(max_iterations, num_iterations) vectors the size of params. ``operator='ggn'``:
  the Gauss-Newton matrix's pairs instead (loss_fn a ``SplitLoss``); 'ef', 'fisher',
  'fisher_exact': the empirical, Monte-Carlo or exact Fisher's (loss_fn a
  ``PerExampleLoss``); as in every probe that takes ``operator``.
  Lanczos over power iteration (PyHessian): far fewer HVPs, k pairs at once; over
  ``lobpcg_standard``: no block of k matvecs per step.
  ``blocks`` ('layers', a list of key paths, or a predicate on leaf paths; see
  ``probes.named_blocks``): a dict {block name: result}, each block's probe as with
  ``block=`` it and key fold_in(key, i) (i its position), all in one program.
  """
  del blocks  # per_block calls this once per block, with block=
  if which not in ('largest', 'smallest'):
    raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
  steps = max_iterations if num_iterations is None else num_iterations
  if not 1 <= k <= steps:
    raise ValueError(f'need 1 <= k <= num_iterations (or max_iterations), got k={k}, {steps}')
  if not tol > 0:
    raise ValueError(f'tol must be > 0, got {tol}')
  params, apply_h = curvature_operator(loss_fn, params, block, operator)
  v0 = normal_like(key, params)
  if num_iterations is None:
    theta, flat_vectors, unravel, residuals, converged, m = _lanczos_to_tolerance(
      apply_h, v0, _Wanted(k, which, tol, max_iterations)
    )
    vectors = jax.vmap(unravel)(flat_vectors)
    return Eigenpairs(theta, vectors, residuals, converged, m)
  q, t, rnorm = _lanczos(apply_h, v0, num_iterations)
  theta, s = _extreme_pairs(t, k, which)  # [k], [m, k]
  vectors = jax.tree.map(lambda qi: jnp.tensordot(s.T, qi, axes=1), q)
  residuals = rnorm * jnp.abs(s[-1, :])
  return Eigenpairs(
    theta, vectors, residuals, residuals <= tol * jnp.abs(theta), jnp.int32(t.shape[0])
  )


@with_precision
@per_block
def spectral_density(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  num_probes: int = 4,
  num_iterations: int = 40,
  block: Block | None = None,
  rtol: float | None = None,
  max_probes: int = 64,
  operator: Operator = 'hessian',
  blocks: Blocks | None = None,
) -> SpectralDensity | dict[str, SpectralDensity]:
  """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

  For each Rademacher probe v, Lanczos gives T = S diag(theta) S^T; the density is
  sum_probes sum_i (S_0i^2 / num_probes) delta(lambda - theta_i). Its moments are exact
  for polynomials of degree < 2 num_iterations: sum w theta = mean v^T H v / ||v||^2,
  an unbiased estimate of tr(H)/n. ``smooth_density`` puts it on a grid.

  ``num_probes`` probes (num_probes x num_iterations HVPs); or, with ``rtol``, probes
  until the trace estimate's standard error is at most rtol |estimate| (at least 2, at
  most ``max_probes``, rows [max_probes, num_iterations], one lax.while_loop). The
  probes' noise dominates SLQ's error (Ghorbani et al.), so that is where it stops.
  ``blocks`` ('layers', a list of key paths, or a predicate on leaf paths; see
  ``probes.named_blocks``): a dict {block name: result}, each block's probe as with
  ``block=`` it and key fold_in(key, i) (i its position), all in one program.
  """
  del blocks  # per_block calls this once per block, with block=
  if rtol is not None:
    check_num_samples(max_probes)
  params, apply_h = curvature_operator(loss_fn, params, block, operator)
  n = sum(x.size for x in jax.tree.leaves(params))

  def one_probe(k):
    _, t, _ = _lanczos(apply_h, rademacher_like(k, params), num_iterations)
    theta, s = jnp.linalg.eigh(t)
    return theta, jnp.square(s[0, :])  # weights of this probe sum to 1

  def density(nodes, weights, count):
    traces = n * jnp.sum(nodes * weights, axis=1)  # [rows], each probe's tr(H) estimate
    used = jnp.arange(nodes.shape[0]) < count
    mean = jnp.sum(jnp.where(used, traces, 0.0)) / count
    var = jnp.sum(jnp.where(used, (traces - mean) ** 2, 0.0)) / jnp.maximum(count - 1, 1)
    nodes = jnp.where(used[:, None], nodes, nodes[0])  # unused rows: inside the range, weight 0
    stderr = jnp.where(count > 1, jnp.sqrt(var / count), jnp.nan)
    return SpectralDensity(
      nodes, jnp.where(used[:, None], weights, 0.0) / count, jnp.int32(count), stderr
    ), mean

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
