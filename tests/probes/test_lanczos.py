"""lanczos.py: extreme eigenpairs against eigh of dense Hessians and known spectra, and
the spectral density's weights and moments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import probes

from .cases import dense_hessian, flat, quadratic_with_spectrum


@pytest.mark.parametrize('which', ['largest', 'smallest'])
def test_top_eigenvalues_match_eigh_of_the_dense_hessian(convnet, convnet_hessian, which):
  loss_fn, params = convnet
  n = flat(params).size
  assert 1500 < n < 5000
  evals = np.linalg.eigvalsh(convnet_hessian)
  expected = evals[::-1][:2] if which == 'largest' else evals[:2]
  r = jax.jit(
    lambda p, k: probes.top_eigenvalues(loss_fn, p, k, k=2, num_iterations=120, which=which)
  )(params, jax.random.key(0))
  np.testing.assert_allclose(r.eigenvalues, expected, rtol=1e-4)
  # The residuals Lanczos reports are the true ones: ||H v - lambda v||.
  hvp = jax.jit(lambda p, v: probes.hvp(loss_fn, p, v))
  for i in range(2):
    vec = jax.tree.map(lambda leaf: leaf[i], r.eigenvectors)
    true_res = np.linalg.norm(flat(hvp(params, vec)) - r.eigenvalues[i] * flat(vec))
    assert np.linalg.norm(flat(vec)) == pytest.approx(1.0, abs=1e-4)
    assert true_res < 1e-3 * abs(expected[0])
    assert r.residuals[i] < 1e-3 * abs(expected[0])


def test_top_eigenvalues_of_a_known_diagonal_spectrum():
  d = jnp.concatenate([jnp.array([50.0, 20.0, -30.0]), jnp.linspace(-1, 1, 500)])
  loss_fn = lambda p: 0.5 * jnp.sum(d * p['w'] ** 2)
  params = {'w': jnp.ones(503)}
  top, low = jax.jit(
    lambda p, k: (
      probes.top_eigenvalues(loss_fn, p, k, k=2, num_iterations=30),
      probes.top_eigenvalues(loss_fn, p, k, k=1, num_iterations=30, which='smallest'),
    )
  )(params, jax.random.key(1))
  np.testing.assert_allclose(top.eigenvalues, [50.0, 20.0], rtol=1e-5)
  assert np.all(top.residuals < 1e-3)
  np.testing.assert_allclose(low.eigenvalues, [-30.0], rtol=1e-5)
  v = np.asarray(top.eigenvectors['w'][0])
  assert abs(v[0]) == pytest.approx(1.0, abs=1e-4)  # e_0, the eigenvector of 50


@pytest.mark.parametrize('which', ['largest', 'smallest'])
def test_top_eigenvalues_stop_at_the_tolerance_with_true_residuals_below_it(which):
  spectrum = np.concatenate(
    [[10.0, 9.0, 8.0, -6.0, -5.0], np.random.default_rng(1).uniform(-1, 4, 195)]
  )
  loss_fn, a = quadratic_with_spectrum(spectrum)
  params = {'x': jnp.zeros(200, jnp.float32)}
  r = jax.jit(
    lambda p, key: probes.top_eigenvalues(
      loss_fn, p, key, k=3, which=which, tol=1e-5, max_iterations=150
    )
  )(params, jax.random.key(0))
  exact = np.sort(spectrum)[::-1][:3] if which == 'largest' else np.sort(spectrum)[:3]
  assert r.converged.tolist() == [True] * 3
  assert 3 <= int(r.num_iterations) < 150  # stopped on the residuals, not the cap
  np.testing.assert_allclose(r.eigenvalues, exact, rtol=1e-5)
  v = np.asarray(r.eigenvectors['x'], np.float64)
  true_residuals = np.linalg.norm(v @ a - np.asarray(r.eigenvalues)[:, None] * v, axis=1)
  assert np.all(true_residuals <= 3e-5 * np.abs(exact))  # the estimate is honest


def test_top_eigenvalues_say_when_they_hit_max_iterations():
  spectrum = np.linspace(1.0, 1.1, 200)  # no gaps: Lanczos cannot separate the top three
  loss_fn, _ = quadratic_with_spectrum(spectrum)
  r = probes.top_eigenvalues(
    loss_fn, {'x': jnp.zeros(200)}, jax.random.key(0), k=3, tol=1e-7, max_iterations=8
  )
  assert int(r.num_iterations) == 8 and not bool(np.all(r.converged))
  short = ~np.asarray(r.converged)
  assert np.all(np.asarray(r.residuals)[short] > 1e-7 * np.abs(np.asarray(r.eigenvalues))[short])


def test_top_eigenvalues_defaults_converge_on_a_small_tanh_mlp():
  """The case a user reported (k=3 on a small tanh MLP, default settings: the third
  eigenvalue came back 1.6e-3 off with nothing saying so), here with 229 parameters."""
  rng = np.random.default_rng(0)
  x, y = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32), jnp.asarray(rng.integers(0, 5, 64))
  sizes = [(8, 16), (16, 5)]
  params = {
    f'w{i}': jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), jnp.float32)
    for i, s in enumerate(sizes)
  }
  params.update({f'b{i}': jnp.zeros(s[1], jnp.float32) for i, s in enumerate(sizes)})

  def loss_fn(p):
    h = jnp.tanh(x @ p['w0'] + p['b0'])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p['w1'] + p['b1'], y).mean()

  r = jax.jit(lambda p, key: probes.top_eigenvalues(loss_fn, p, key, k=3))(
    params, jax.random.key(1)
  )
  exact = np.linalg.eigvalsh(dense_hessian(loss_fn, params))[::-1][:3]
  assert r.converged.tolist() == [True] * 3
  np.testing.assert_allclose(r.eigenvalues, exact, rtol=1e-3)


def test_spectral_density_integrates_to_one_and_has_the_right_moments(mlp, mlp_hessian):
  loss_fn, params = mlp
  h = mlp_hessian
  n = h.shape[0]
  d = jax.jit(
    lambda p, k: probes.spectral_density(loss_fn, p, k, num_probes=30, num_iterations=30)
  )(params, jax.random.key(0))
  w, x = np.asarray(d.weights, np.float64), np.asarray(d.nodes, np.float64)
  assert w.shape == (30, 30) and np.all(w >= 0)
  assert w.sum() == pytest.approx(1.0, abs=1e-5)
  per_probe_m1 = (w * x).sum(1) * 30  # each probe's estimate of tr(H)/n
  per_probe_m2 = (w * x**2).sum(1) * 30
  for est, exact in ((per_probe_m1, np.trace(h) / n), (per_probe_m2, np.trace(h @ h) / n)):
    assert abs(est.mean() - exact) < 4 * est.std(ddof=1) / np.sqrt(30) + 1e-6 * abs(exact)
  grid = np.linspace(x.min() - 1, x.max() + 1, 4000)
  smooth = np.asarray(probes.smooth_density(d, jnp.asarray(grid), sigma=0.05))
  assert np.trapezoid(smooth, grid) == pytest.approx(1.0, abs=1e-3)


def test_spectral_density_moments_are_exact_for_a_diagonal_hessian():
  # Rademacher probes have v_i^2 = 1, so v^T H v / n = mean(d) and ||Hv||^2 / n = mean(d^2).
  d = jnp.linspace(-2.0, 5.0, 300)
  loss_fn = lambda p: 0.5 * jnp.sum(d * p**2)
  dens = probes.spectral_density(
    loss_fn, jnp.zeros(300), jax.random.key(0), num_probes=3, num_iterations=10
  )
  m1 = float(jnp.sum(dens.weights * dens.nodes))
  m2 = float(jnp.sum(dens.weights * dens.nodes**2))
  assert m1 == pytest.approx(float(d.mean()), rel=1e-5)
  assert m2 == pytest.approx(float(jnp.mean(d**2)), rel=1e-5)


def test_spectral_density_adds_probes_until_the_trace_stderr_meets_rtol():
  spectrum = np.random.default_rng(5).uniform(-1.0, 4.0, 150)
  loss_fn, a = quadratic_with_spectrum(spectrum)
  p = {'x': jnp.zeros(150, jnp.float32)}
  run = jax.jit(
    lambda p, k, rtol, cap: probes.spectral_density(
      loss_fn, p, k, num_iterations=20, rtol=rtol, max_probes=cap
    ),
    static_argnums=(2, 3),
  )
  d = run(p, jax.random.key(0), 0.02, 64)
  used = int(d.num_probes)
  w, x = np.asarray(d.weights, np.float64), np.asarray(d.nodes, np.float64)
  assert 2 <= used < 64 and w[used:].sum() == 0 and w.sum() == pytest.approx(1.0, abs=1e-5)
  per_probe = 150 * (w[:used] * x[:used]).sum(1) * used  # each probe's tr(A) estimate
  stderr = per_probe.std(ddof=1) / np.sqrt(used)
  assert float(d.trace_stderr) == pytest.approx(stderr, rel=1e-3)
  assert stderr <= 0.02 * abs(per_probe.mean())
  assert abs(per_probe.mean() - np.trace(a)) < 4 * stderr
  assert x[used:].min() >= x[:used].min() and x[used:].max() <= x[:used].max()  # plot ranges
  capped = run(p, jax.random.key(0), 1e-6, 5)
  assert int(capped.num_probes) == 5 and float(capped.trace_stderr) > 1e-6 * abs(np.trace(a))


def test_eigenvectors_point_along_the_start_vector_whatever_eighs_signs():
  """Each eigenvector's sign is fixed by the run's start vector (a non-negative inner
  product with it), not by eigh's arbitrary choice, so runs on other device layouts agree."""
  from bnjax.probes import _common  # pylint: disable=g-import-not-at-top

  spectrum = np.linspace(1.0, 8.0, 30)
  loss_fn, a = quadratic_with_spectrum(spectrum, seed=3)
  params = {'x': jnp.zeros(30, jnp.float32)}
  for seed in range(4):
    key = jax.random.key(seed)
    start = flat(_common.normal_like(key, params))
    for r in (
      probes.top_eigenvalues(loss_fn, params, key, k=3, tol=1e-5),
      probes.top_eigenvalues(loss_fn, params, key, k=3, num_iterations=30),
    ):
      np.testing.assert_allclose(r.eigenvalues, spectrum[::-1][:3], rtol=1e-4)
      vectors = np.asarray(r.eigenvectors['x'], np.float64)  # [3, 30]
      assert np.all(vectors @ start > 0), (seed, vectors @ start)
