"""estimators.py: Hutchinson, Hutch++ and the diagonal estimator against dense traces and
diagonals, within their standard errors."""

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import probes

from .cases import dense_hessian, flat, quadratic_with_spectrum


def test_hessian_trace_within_three_standard_errors(mlp, mlp_hessian):
  loss_fn, params = mlp
  trace = np.trace(mlp_hessian)
  r = jax.jit(lambda p, k: probes.hessian_trace(loss_fn, p, k, num_samples=200, batch_size=20))(
    params, jax.random.key(0)
  )
  assert r.stderr > 0
  assert abs(r.estimate - trace) < 3 * r.stderr


def test_hessian_trace_samples_until_its_standard_error_meets_rtol():
  spectrum = np.random.default_rng(4).uniform(0.5, 2.0, 120)
  loss_fn, a = quadratic_with_spectrum(spectrum)
  p = {'x': jnp.zeros(120, jnp.float32)}
  run = jax.jit(
    lambda p, k, rtol, cap: probes.hessian_trace(
      loss_fn, p, k, batch_size=4, rtol=rtol, max_samples=cap
    ),
    static_argnums=(2, 3),
  )
  r = run(p, jax.random.key(0), 5e-3, 2000)
  assert float(r.stderr) <= 5e-3 * abs(float(r.estimate)) and 8 <= int(r.num_samples) < 2000
  assert abs(float(r.estimate) - np.trace(a)) < 4 * float(r.stderr)
  capped = run(p, jax.random.key(0), 1e-6, 40)
  assert int(capped.num_samples) == 40 and float(capped.stderr) > 1e-6 * abs(float(capped.estimate))


def test_hutchpp_is_exact_on_low_rank_and_far_better_than_hutchinson_on_decaying_spectra():
  low_rank = np.concatenate([[5.0, 3.0, -2.0, 1.0], np.zeros(96)])
  loss_fn, a = quadratic_with_spectrum(low_rank)
  p = {'x': jnp.zeros(100, jnp.float32)}
  r = jax.jit(lambda p, k: probes.hessian_trace_hutchpp(loss_fn, p, k, num_products=30))(
    p, jax.random.key(0)
  )
  # The sketch holds it all.
  assert abs(float(r.estimate) - np.trace(a)) < 1e-4 * np.abs(low_rank).sum()
  decaying = 0.7 ** np.arange(300)
  loss_fn, a = quadratic_with_spectrum(decaying, seed=2)
  p = {'x': jnp.zeros(300, jnp.float32)}
  pp = jax.jit(jax.vmap(lambda k: probes.hessian_trace_hutchpp(loss_fn, p, k, num_products=30)))
  hutch = jax.jit(jax.vmap(lambda k, n=300: probes.hessian_trace(loss_fn, p, k, num_samples=n)))
  keys = jax.random.split(jax.random.key(3), 20)
  err_pp = np.abs(np.asarray(pp(keys).estimate) - decaying.sum())
  err_h = np.abs(np.asarray(hutch(keys).estimate) - decaying.sum())
  # With a tenth of the products Hutch++ is far more accurate (here 0.026 against 0.13).
  assert np.mean(err_pp) < 0.5 * np.mean(err_h)


def test_hessian_diagonal_matches_the_dense_diagonal_within_its_standard_error(mlp):
  loss_fn, params = mlp
  exact = np.diag(dense_hessian(loss_fn, params))
  r = jax.jit(lambda p, k: probes.hessian_diagonal(loss_fn, p, k, num_samples=400))(
    params, jax.random.key(0)
  )
  estimate, stderr = flat(r.estimate), flat(r.stderr)
  z = np.abs(estimate - exact) / np.maximum(stderr, 1e-12)
  assert np.mean(z < 3) > 0.97 and np.median(z) < 1.5  # unbiased, honest error bars
  assert np.corrcoef(estimate, exact)[0, 1] > 0.9


def test_random_vectors_are_one_draw_cut_into_independent_leaves_of_each_dtype():
  """normal_like / rademacher_like (the probes' random vectors): every entry of every leaf
  an independent sample, in the leaf's shape and dtype, from one random-bits draw (one
  per leaf made the probes' programs far larger to compile)."""
  from bnjax.probes import _common  # pylint: disable=g-import-not-at-top

  params = {
    'a': jnp.zeros((100, 60), jnp.float32),
    'b': jnp.zeros((100, 60), jnp.float32),
    'c': jnp.zeros((7,), jnp.bfloat16),
    'd': jnp.zeros((), jnp.float32),
  }
  key = jax.random.key(0)
  for like, check in (
    (_common.normal_like, lambda x: abs(x.mean()) < 0.02 and abs(x.var() - 1) < 0.03),
    (_common.rademacher_like, lambda x: set(np.unique(x)) == {-1.0, 1.0}),
  ):
    z = like(key, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), z) == jax.tree.map(
      lambda x: (x.shape, x.dtype), params
    )
    a, b = np.asarray(z['a'], np.float64).ravel(), np.asarray(z['b'], np.float64).ravel()
    assert check(np.concatenate([a, b]))  # 12,000 entries: 0.02 is 2.2 standard errors
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05  # two leaves of one shape, independent
    assert not np.array_equal(np.asarray(like(jax.random.key(1), params)['a']), z['a'])
    draws = str(jax.make_jaxpr(like)(key, params)).count('random_bits')
    assert draws == 1, draws
    assert like(key, {}) == {}
