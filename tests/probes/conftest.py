"""Fixtures of the probe tests: small bnjax models with their dense Hessians, a quadratic,
and a BN MLP split at its logits (for the GGN).

tests/conftest.py (8 fake CPU devices, set before jax is imported) applies here too. The
dense Hessians are computed once for the whole package (the conv net's takes seconds).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import models

from .cases import dense_hessian, model_loss


@pytest.fixture(scope='package')
def mlp():
  x = jax.random.normal(jax.random.key(1), (16, 6))
  y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
  return model_loss('mlp', 'batch', x, y, hidden=(12, 10), num_classes=3)


@pytest.fixture(scope='package')
def convnet():
  # vgg_tiny on 8x8 inputs: two conv layers with BN, ~2,000 parameters.
  x = jax.random.normal(jax.random.key(3), (8, 8, 8, 3))
  y = jax.random.randint(jax.random.key(4), (8,), 0, 10)
  return model_loss('vgg_tiny', 'batch', x, y)


@pytest.fixture(scope='package')
def dln():
  x = jax.random.normal(jax.random.key(5), (32, 10))
  y = x @ jax.random.normal(jax.random.key(6), (10, 10))
  return model_loss('dln', 'none', x, y)


@pytest.fixture(scope='package')
def mlp_hessian(mlp):
  return dense_hessian(*mlp)


@pytest.fixture(scope='package')
def convnet_hessian(convnet):
  return dense_hessian(*convnet)


@pytest.fixture(scope='package')
def dln_hessian(dln):
  return dense_hessian(*dln)


@pytest.fixture
def quadratic():
  rng = np.random.default_rng(0)
  m = rng.standard_normal((20, 20))
  a = jnp.asarray(m @ m.T / 20 + np.eye(20), jnp.float32)
  loss_fn = lambda p: 0.5 * p['x'] @ a @ p['x']
  params = {'x': jnp.asarray(rng.standard_normal(20), jnp.float32)}
  return loss_fn, params, np.asarray(a, np.float64)


@pytest.fixture
def ggn_mlp():
  """(model, outputs_fn, loss_of_outputs, params): a BN MLP split at its logits."""
  model = models.get_model('mlp', 'batch', hidden=(6,), num_classes=3)
  x = jax.random.normal(jax.random.key(1), (16, 4))
  y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
  v = model.init(jax.random.key(0), x, train=False)
  outputs_fn = lambda p: model.apply(
    {'params': p, 'batch_stats': v['batch_stats']}, x, train=True, mutable=['batch_stats']
  )[0]
  loss_of_outputs = lambda o: optax.softmax_cross_entropy_with_integer_labels(o, y).mean()
  params = v['params']
  return model, outputs_fn, loss_of_outputs, params


@pytest.fixture(scope='package')
def classifier():
  """(outputs_fn, targets, params): a BN MLP's logits [16, 3] (train mode, so examples are
  coupled through the batch statistics) and integer labels [16], for the Fisher matrices."""
  model = models.get_model('mlp', 'batch', hidden=(6,), num_classes=3)
  x = jax.random.normal(jax.random.key(11), (16, 4))
  y = jax.random.randint(jax.random.key(12), (16,), 0, 3)
  v = model.init(jax.random.key(13), x, train=False)
  outputs_fn = lambda p: model.apply(
    {'params': p, 'batch_stats': v['batch_stats']}, x, train=True, mutable=['batch_stats']
  )[0]
  return outputs_fn, y, v['params']
