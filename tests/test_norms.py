"""Each normaliser against a direct numpy computation of its formula."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bnjax.models import norms


def _apply(module, y, train=True, key=0, mutable=('batch_stats',)):
  variables = module.init({'params': jax.random.key(0), 'noise': jax.random.key(1)}, y, False)
  out, updates = module.apply(
    variables, y, train, rngs={'noise': jax.random.key(key)}, mutable=list(mutable)
  )
  return variables, out, updates


@pytest.fixture
def conv_acts():
  rng = np.random.default_rng(0)
  # [batch, H, W, C] with channel-specific means and scales.
  return (rng.normal(size=(8, 4, 4, 5)) * np.arange(1, 6) + np.arange(5) * 3).astype(np.float32)


def test_batchnorm_matches_numpy_and_updates_running_stats(conv_acts):
  bn = norms.BatchNorm(momentum=0.9, epsilon=1e-5)
  _, out, updates = _apply(bn, conv_acts)
  flat = conv_acts.reshape(-1, 5).astype(np.float64)
  mean, var = flat.mean(0), flat.var(0)
  expected = (conv_acts - mean) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  o = np.asarray(out).reshape(-1, 5)
  np.testing.assert_allclose(o.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(o.std(0), 1, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * var, rtol=1e-5)


def test_batchnorm_eval_uses_running_stats(conv_acts):
  bn = norms.BatchNorm(epsilon=1e-5)
  variables = bn.init(jax.random.key(0), conv_acts, False)
  variables = {
    'params': {'scale': jnp.full(5, 2.0), 'bias': jnp.full(5, 0.5)},
    'batch_stats': {'mean': jnp.arange(5.0), 'var': jnp.full(5, 4.0)},
  }
  out = bn.apply(variables, conv_acts, False)
  np.testing.assert_allclose(
    out, 2 * (conv_acts - np.arange(5)) / np.sqrt(4 + 1e-5) + 0.5, rtol=1e-5, atol=1e-5
  )


def test_grouped_statistics_are_per_group(conv_acts):
  bn = norms.BatchNorm(num_groups=2)
  _, out, _ = _apply(bn, conv_acts)
  for g in range(2):
    part = conv_acts[4 * g : 4 * g + 4].reshape(-1, 5).astype(np.float64)
    expected = (conv_acts[4 * g : 4 * g + 4] - part.mean(0)) / np.sqrt(part.var(0) + 1e-5)
    np.testing.assert_allclose(out[4 * g : 4 * g + 4], expected, atol=1e-5)


@pytest.mark.parametrize(
  'name,size',
  [
    ('lp1', lambda y: np.abs(y).mean(0)),
    ('lp2', lambda y: np.sqrt((y**2).mean(0))),
    ('lpinf', lambda y: np.abs(y).max(0)),
  ],
)
def test_lp_normalisation_formula(conv_acts, name, size):
  module = norms.get_normalizer(name)(name='n')
  _, out, updates = _apply(module, conv_acts)
  flat = conv_acts.reshape(-1, 5).astype(np.float64)
  s = size(flat)  # taken before the mean shift
  expected = (conv_acts - flat.mean(0)) / (s + 1e-5)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['size'], 0.9 + 0.1 * s, rtol=1e-5)


def test_noise_distributions_match_algorithm_1():
  """a <- s a + m: recover m (a = 0) and s (a = 1 minus a = 0, same key) and test
  the per-unit and per-element distributions against Algorithm 1's constants."""
  n_mu, n_sigma, r_mu, r_sigma = 0.5, 1.25, 0.1, 0.1
  units, elems = 2000, 400
  key = jax.random.key(3)
  noise = functools.partial(
    norms.distributional_noise, key, n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma
  )
  zero = jnp.zeros((elems, units))
  m = np.asarray(noise(zero), np.float64)
  s = np.asarray(noise(zero + 1.0), np.float64) - m
  # Per unit: mu_j = centre of U(mu_j - r_mu, mu_j + r_mu), sigma_j = mean of N(sigma_j, r_sigma).
  mu_hat = m.mean(0)
  sigma_hat = s.mean(0)
  assert stats.kstest(mu_hat, stats.uniform(-n_mu, 2 * n_mu).cdf).pvalue > 1e-3
  assert stats.kstest(sigma_hat, stats.uniform(1, n_sigma - 1).cdf).pvalue > 1e-3
  # Per element, around the unit's centre: uniform half-width r_mu, normal sd r_sigma.
  within_m = (m - mu_hat).ravel()
  assert np.abs(within_m).max() <= 2 * r_mu + 1e-6
  np.testing.assert_allclose(within_m.std(), r_mu / np.sqrt(3), rtol=0.02)
  np.testing.assert_allclose((s - sigma_hat).ravel().std(), r_sigma, rtol=0.02)
  # A wrong constant must fail the same test.
  assert stats.kstest(sigma_hat, stats.uniform(1, 1.5 - 1).cdf).pvalue < 1e-3


def test_noise_is_exactly_algorithm_1_written_plainly_in_value_gradient_and_hvp():
  """The guard that keeps XLA from recomputing the noise in its consumers changes no
  value or derivative: bitwise equal to s * a + m drawn by the same calls, jitted (the
  summed loss up to the order XLA adds in, which the fusion may change)."""
  consts = {'n_mu': 0.5, 'n_sigma': 1.25, 'r_mu': 0.1, 'r_sigma': 0.1}

  def plain(key, a, n_mu, n_sigma, r_mu, r_sigma):
    k_mu, k_sigma, k_m, k_s = jax.random.split(key, 4)
    c = a.shape[-1]
    mu = jax.random.uniform(k_mu, (c,), a.dtype, -n_mu, n_mu)
    sigma = jax.random.uniform(k_sigma, (c,), a.dtype, 1.0, n_sigma)
    m = mu + jax.random.uniform(k_m, a.shape, a.dtype, -r_mu, r_mu)
    return (sigma + r_sigma * jax.random.normal(k_s, a.shape, a.dtype)) * a + m

  key = jax.random.key(5)
  a = jax.random.normal(jax.random.key(6), (16, 8, 8, 12))
  v = jax.random.normal(jax.random.key(7), a.shape)

  @functools.partial(jax.jit, static_argnums=0)
  def loss_grad_hvp_noise(noise, a):
    loss = lambda a: jnp.sum(noise(key, a, **consts) ** 3) / 3
    return (
      loss(a),
      jax.grad(loss)(a),
      jax.jvp(jax.grad(loss), (a,), (v,))[1],
      noise(key, a, **consts),
    )

  got = loss_grad_hvp_noise(norms.distributional_noise, a)
  expected = loss_grad_hvp_noise(plain, a)
  np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
  for g, e in zip(got[1:], expected[1:]):
    np.testing.assert_array_equal(g, e)


def test_noisy_batchnorm_is_bn_plus_fresh_noise_in_training_only(conv_acts):
  noisy = norms.NoisyBatchNorm()
  bn = norms.BatchNorm()
  v, out1, _ = _apply(noisy, conv_acts, key=1)
  _, out2, _ = _apply(noisy, conv_acts, key=2)
  _, clean, _ = _apply(bn, conv_acts)
  assert not np.allclose(out1, out2)  # a fresh draw per key
  assert not np.allclose(out1, clean)
  eval_out = noisy.apply(v, conv_acts, False)
  bn_eval = bn.apply(
    {'params': v['params']['bn'], 'batch_stats': v['batch_stats']['bn']}, conv_acts, False
  )
  np.testing.assert_allclose(eval_out, bn_eval)
  # At the noise's expectation: scale E[s] = (1 + n_sigma) / 2 = 1.125, shift E[m] = 0.
  expected = norms.NoisyBatchNorm(eval_noise='expectation').apply(v, conv_acts, False)
  np.testing.assert_allclose(expected, 1.125 * bn_eval, rtol=1e-6)
  only = norms.NoiseOnly(eval_noise='expectation').apply({}, conv_acts, False)
  np.testing.assert_allclose(only, 1.125 * conv_acts, rtol=1e-6)


def test_registry_lists_valid_names_and_fields():
  with pytest.raises(ValueError, match="unknown normaliser 'bogus'.*noisy_batch.*lpinf"):
    norms.get_normalizer('bogus')
  with pytest.raises(ValueError, match='no field'):
    norms.get_normalizer('batch', n_mu=0.3)
  assert set(norms.NORMALIZERS) >= {'none', 'batch', 'noisy_batch', 'noise', 'lp1', 'lp2', 'lpinf'}
