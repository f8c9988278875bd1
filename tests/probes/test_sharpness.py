"""Sharpness measures against closed forms on quadratics, and the property they exist for:
BatchNorm's per-channel rescaling moves lambda_max but not adaptive sharpness."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import probes

A_DIAG = np.array([3.0, 2.0, 1.0, 0.5, 4.0])
W = np.array([1.0, -2.0, 0.5, 1.5, -0.3])


def diagonal_quadratic(p):
  """L(w) = 0.5 w^T A w, A = diag(A_DIAG), w split over two leaves."""
  a = jnp.asarray(A_DIAG, jnp.float32)
  x = jnp.concatenate([p['a'], p['b']])
  return 0.5 * jnp.sum(a * x * x)


def tree(x):
  return {'a': jnp.asarray(x[:2], jnp.float32), 'b': jnp.asarray(x[2:], jnp.float32)}


def worst_l2_closed_form(a, w, rho):
  """max over ||u||_2 <= rho of L(w + |w| u) - L(w), L = 0.5 sum a x^2 (float64).

  In u: c^T u + 0.5 u^T B u with c = a |w| w, B = diag(a w^2) (convex): the maximum is
  on the sphere at u = (lambda I - B)^-1 c, lambda > max B solving ||u|| = rho.
  """
  b, c = a * w**2, a * np.abs(w) * w
  lo, hi = b.max() + 1e-12, b.max() + np.linalg.norm(c) / rho + 1.0
  for _ in range(200):  # bisection: ||u(lambda)|| falls as lambda grows
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if np.linalg.norm(c / (mid - b)) > rho else (lo, mid)
  u = c / (0.5 * (lo + hi) - b)
  return c @ u + 0.5 * np.sum(b * u**2)


@pytest.mark.parametrize('p, second_moment', [(2, 1.0), ('inf', 1.0 / 3.0)])
def test_average_sharpness_of_a_quadratic_is_the_closed_form(p, second_moment):
  # E[L(w + delta)] - L(w) = 0.5 rho^2 E[z^2] sum_i A_ii w_i^2 (the linear term has mean
  # 0, but its spread ~ rho dominates the standard error: a large rho keeps that small).
  rho = 0.5
  r = jax.jit(
    lambda w, k: probes.adaptive_sharpness(
      diagonal_quadratic, w, k, rho, kind='average', p=p, num_samples=4000
    )
  )(tree(W), jax.random.key(0))
  expected = 0.5 * rho**2 * second_moment * np.sum(A_DIAG * W**2)
  assert r.values.shape == (4000,)
  assert 0 < r.stderr < 0.1 * expected
  assert abs(r.sharpness - expected) <= 3.5 * r.stderr, (r.sharpness, expected, r.stderr)
  np.testing.assert_allclose(r.loss, 0.5 * np.sum(A_DIAG * W**2), rtol=1e-6)


def test_worst_case_sharpness_of_a_quadratic_is_the_closed_form_maximum():
  rho = 0.2
  run = jax.jit(
    lambda w, k: [
      probes.adaptive_sharpness(diagonal_quadratic, w, k, rho, p=p, num_steps=60)
      for p in (2, 'inf')
    ]
  )
  l2, linf = run(tree(W), jax.random.key(0))
  np.testing.assert_allclose(l2.sharpness, worst_l2_closed_form(A_DIAG, W, rho), rtol=1e-4)
  # p=inf: separable, each |w_i + |w_i| u_i| largest at u_i = rho sign(w_i).
  np.testing.assert_allclose(
    linf.sharpness, 0.5 * np.sum(A_DIAG * W**2) * ((1 + rho) ** 2 - 1), rtol=1e-5
  )
  for r in (l2, linf):
    assert r.values.shape == (61,) and r.values[0] == 0.0  # the ascent starts at w
    np.testing.assert_allclose(r.sharpness, np.max(r.values), rtol=1e-6)
    assert np.isnan(r.stderr)
  # A random start inside the ball reaches the same maximum.
  l2_random = probes.adaptive_sharpness(
    diagonal_quadratic, tree(W), jax.random.key(1), rho, num_steps=60, random_init=True
  )
  np.testing.assert_allclose(l2_random.sharpness, l2.sharpness, rtol=1e-4)


def test_epsilon_sharpness_of_a_1d_quadratic_is_keskars_closed_form():
  # L(x) = 0.5 k (x - m)^2: the box |z| <= eps (|x| + 1) is best used away from m.
  k, m, x, eps = 3.0, 0.4, -1.2, 1e-2
  loss_fn = lambda p: 0.5 * k * jnp.sum((p - m) ** 2)
  r = jax.jit(lambda p, key: probes.epsilon_sharpness(loss_fn, p, key, eps, num_steps=5))(
    jnp.array([x]), jax.random.key(0)
  )
  loss = 0.5 * k * (x - m) ** 2
  worst = 0.5 * k * (abs(x - m) + eps * (abs(x) + 1)) ** 2
  np.testing.assert_allclose(r.sharpness, 100 * (worst - loss) / (1 + loss), rtol=1e-5)
  np.testing.assert_allclose(r.loss, loss, rtol=1e-6)


def test_ignore_and_block_leave_the_other_leaves_unperturbed():
  w = tree(W)
  ignored = probes.adaptive_sharpness(
    diagonal_quadratic, w, jax.random.key(0), 0.2, ignore=('b',), num_steps=30
  )
  only_a = probes.adaptive_sharpness(
    diagonal_quadratic, w, jax.random.key(0), 0.2, block=('a',), num_steps=30
  )
  np.testing.assert_allclose(ignored.sharpness, only_a.sharpness, rtol=1e-6)
  np.testing.assert_allclose(
    ignored.sharpness, worst_l2_closed_form(A_DIAG[:2], W[:2], 0.2), rtol=1e-4
  )


class BNNet(nn.Module):
  """Dense -> BatchNorm (train mode) -> ReLU -> Dense: Dense_0's kernel is scale-invariant
  per output channel. epsilon 1e-10 (not Flax's 1e-5, which would add a relative
  ~1e-5 (1 - 1/c^2) change) so that invariance holds to float32 rounding."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(6, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=False, epsilon=1e-10)(x)
    return nn.Dense(3)(nn.relu(x))


@pytest.fixture(scope='module')
def bn_net():
  model = BNNet()
  x = jax.random.normal(jax.random.key(0), (32, 4))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 3)
  variables = model.init(jax.random.key(2), x)

  def loss_fn(params):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']}, x, mutable=['batch_stats']
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss_fn, variables['params']


def rescaled(params, c):
  """Dense_0's output channel j multiplied by c[j]: the same function under BN."""
  out = jax.tree.map(lambda x: x, params)
  out['Dense_0'] = {'kernel': params['Dense_0']['kernel'] * jnp.asarray(c, jnp.float32)}
  return out


def measures(loss_fn, params):
  key = jax.random.key(3)
  return {
    'loss': loss_fn(params),
    'worst l2': probes.adaptive_sharpness(loss_fn, params, key, 0.5, num_steps=10).sharpness,
    'worst linf': probes.adaptive_sharpness(
      loss_fn, params, key, 0.1, p='inf', num_steps=10
    ).sharpness,
    'average l2': probes.adaptive_sharpness(
      loss_fn, params, key, 0.5, kind='average', num_samples=64
    ).sharpness,
    'lambda_max': probes.top_eigenvalues(loss_fn, params, key, tol=1e-6).eigenvalues[0],
    'lambda_max Dense_0': probes.top_eigenvalues(
      loss_fn, params, key, tol=1e-6, block=('Dense_0',)
    ).eigenvalues[0],
  }


def test_bn_rescaling_moves_lambda_max_but_not_adaptive_sharpness(bn_net):
  loss_fn, params = bn_net
  run = jax.jit(lambda p: measures(loss_fn, p))
  base = run(params)
  # Powers of two rescale exactly in floating point; 3 shows float32 rounding (~4e-7).
  per_channel = run(rescaled(params, [2.0, 0.5, 3.0, 0.5, 0.5, 2.0]))
  uniform = run(rescaled(params, [2.0] * 6))
  for other in (per_channel, uniform):
    for name in ('loss', 'worst l2', 'worst linf', 'average l2'):
      assert base[name] > 0, name
      np.testing.assert_allclose(other[name], base[name], rtol=1e-5, err_msg=name)
  # Per-channel rescaling reshapes the whole Hessian: its top eigenvalue moves.
  assert abs(per_channel['lambda_max'] / base['lambda_max'] - 1) > 0.1
  # One c for the whole kernel: that block's curvature scales exactly by 1/c^2.
  np.testing.assert_allclose(
    uniform['lambda_max Dense_0'], base['lambda_max Dense_0'] / 4, rtol=1e-3
  )


def test_sharpness_inputs_are_checked():
  w = tree(W)
  with pytest.raises(ValueError, match='kind'):
    probes.adaptive_sharpness(diagonal_quadratic, w, jax.random.key(0), 0.1, kind='max')
  with pytest.raises(ValueError, match='p must be'):
    probes.adaptive_sharpness(diagonal_quadratic, w, jax.random.key(0), 0.1, p=1)
  with pytest.raises(ValueError, match='rho'):
    probes.adaptive_sharpness(diagonal_quadratic, w, jax.random.key(0), 0.0)
