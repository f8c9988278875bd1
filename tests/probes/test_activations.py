"""activations.py: curvature wrt activations against dense activation Hessians, the
paper's Theorems 4.1 and 4.2 per unit, and activation statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import models, probes


def test_activation_curvature_matches_the_dense_activation_hessian():
  x = jax.random.normal(jax.random.key(0), (6, 4))
  y = jax.random.randint(jax.random.key(1), (6,), 0, 3)
  model = models.get_model('mlp', 'batch', hidden=(5,), num_classes=3)
  v = model.init(jax.random.key(2), x, train=False)

  def loss_of_perturbation(delta):
    out, _ = model.apply(
      {'params': v['params'], 'batch_stats': v['batch_stats'], 'perturbations': delta},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

  zero = jax.tree.map(jnp.zeros_like, v['perturbations'])
  r = jax.jit(lambda z: probes.activation_curvature(loss_of_perturbation, z))(zero)
  for name in ('dense1_out', 'norm1_out'):
    f = lambda a, name=name: loss_of_perturbation(dict(zero, **{name: a.reshape(zero[name].shape)}))
    g, h = (
      np.asarray(a, np.float64)
      for a in jax.jit(lambda a, f=f: (jax.grad(f)(a), jax.hessian(f)(a)))(zero[name].ravel())
    )
    assert r.grad_norm[name] == pytest.approx(np.linalg.norm(g), rel=1e-5)
    assert r.quadratic_form[name] == pytest.approx(g @ h @ g, rel=1e-3, abs=1e-9)


@pytest.fixture(scope='module')
def bn_layer_in_a_network():
  """loss of (y, z) perturbations at layer 2 of a vgg_tiny with BN, and that layer's y."""
  x = jax.random.normal(jax.random.key(3), (8, 8, 8, 3))
  labels = jax.random.randint(jax.random.key(4), (8,), 0, 10)
  model = models.get_model('vgg_tiny', 'batch')
  v = model.init(jax.random.key(0), x, train=False)
  variables = {'params': v['params'], 'batch_stats': v['batch_stats']}
  _, st = model.apply(variables, x, train=True, mutable=['intermediates', 'batch_stats'])

  zeros = {name: jnp.zeros_like(a[0]) for name, a in st['intermediates'].items()}

  def loss_of_perturbation(delta):
    perturbations = dict(zeros, conv2_out=delta['y'], norm2_out=delta['z'])
    out, _ = model.apply(
      dict(variables, perturbations=perturbations), x, train=True, mutable=['batch_stats']
    )
    return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

  # A non-trivial gamma, so that the theorems' gamma terms matter.
  gamma = 1.0 + jax.random.uniform(jax.random.key(5), (16,))
  variables['params'] = dict(
    variables['params'], norm2=dict(variables['params']['norm2'], scale=gamma)
  )
  return loss_of_perturbation, st['intermediates']['conv2_out'][0], gamma


def test_theorem_4_1_is_an_equality_per_unit(bn_layer_in_a_network):
  loss_of_perturbation, y, gamma = bn_layer_in_a_network
  r = jax.jit(
    lambda y, gamma: probes.batchnorm_theorems(
      loss_of_perturbation, y, gamma, 1e-5, units=jnp.arange(16)
    )
  )(y, gamma)
  assert np.all(np.asarray(r.grad_y_sq) > 0)
  np.testing.assert_allclose(r.grad_y_sq, r.thm41_rhs, rtol=1e-4)
  # BN shrinks the gradient: ||dL/dy|| relative to ||dL/dz|| scaled by gamma / sigma.
  sigma2 = np.asarray(y).reshape(-1, 16).var(0) + 1e-5
  assert np.all(np.asarray(r.grad_y_sq) <= np.asarray(gamma**2 / sigma2 * r.grad_z_sq) * (1 + 1e-5))


def test_theorem_4_2_bound_holds_per_unit(bn_layer_in_a_network):
  loss_of_perturbation, y, gamma = bn_layer_in_a_network
  r = jax.jit(
    lambda y, gamma: probes.batchnorm_theorems(
      loss_of_perturbation, y, gamma, 1e-5, units=jnp.arange(8)
    )
  )(y, gamma)
  lhs, rhs = np.asarray(r.curvature_y, np.float64), np.asarray(r.thm42_rhs, np.float64)
  scale = np.abs(lhs).max()
  assert scale > 0
  assert np.all(lhs <= rhs + 1e-4 * scale)


def test_activation_statistics():
  a = jax.random.normal(jax.random.key(0), (4, 3, 3, 6)) * jnp.arange(1.0, 7.0)
  s = probes.activation_statistics(a, [1, 5])
  ref = np.asarray(a).reshape(-1, 6)[:, [1, 5]]
  np.testing.assert_allclose(s.values, ref.T)
  np.testing.assert_allclose(s.mean, ref.mean(0), rtol=1e-5)
  np.testing.assert_allclose(s.var, ref.var(0), rtol=1e-5)
