"""The shared cases of the probe tests: dense references, models and their losses.

Plain functions (no pytest): conftest.py builds its fixtures from them, the test modules
import them (``from .cases import ...``), and multihost_probes.py, a script run in a
subprocess, imports ``all_probes`` (``from cases import ...``). Nothing here imports a
test module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bnjax import models, probes


def dense_hessian(loss_fn, params):
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat), np.float64)


def flat(tree):
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def random_like(key, params):
  flat_p, unravel = ravel_pytree(params)
  return unravel(jax.random.normal(key, flat_p.shape))


def model_loss(name, norm, x, y, **kwargs):
  """(loss_fn, params) for a bnjax model, BN in training mode, updated stats discarded."""
  model = models.get_model(name, norm, **kwargs)
  v = model.init({'params': jax.random.key(0), 'noise': jax.random.key(0)}, x, train=False)

  def loss_fn(params):
    out, _ = model.apply(
      {'params': params, 'batch_stats': v.get('batch_stats', {})},
      x,
      train=True,
      rngs={'noise': jax.random.key(1)},
      mutable=['batch_stats'],
    )
    if name == 'dln':
      return jnp.sum((out - y) ** 2)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

  return loss_fn, v['params']


def quadratic_with_spectrum(eigenvalues, seed=0):
  """loss(x) = x^T A x / 2 with A = Q diag(eigenvalues) Q^T, Q a random rotation."""
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
  a = (q * eigenvalues) @ q.T
  return (lambda p: 0.5 * p['x'] @ (jnp.asarray(a, jnp.float32) @ p['x'])), a


def all_probes(params, new_params, batch, key):
  """Every probe at once on a BN MLP; batch and params are arguments (no constants)."""
  model = models.get_model('mlp', 'batch', hidden=(12, 10), num_classes=3)

  def loss_fn(p):
    out, _ = model.apply(
      {'params': p, 'batch_stats': batch['stats']}, batch['x'], train=True, mutable=['batch_stats']
    )
    return optax.softmax_cross_entropy_with_integer_labels(out, batch['y']).mean()

  def loss_of_perturbation(delta):
    out, _ = model.apply(
      {'params': params, 'batch_stats': batch['stats'], 'perturbations': delta},
      batch['x'],
      train=True,
      mutable=['batch_stats'],
    )
    return optax.softmax_cross_entropy_with_integer_labels(out, batch['y']).mean()

  zero = {
    f'{kind}{k}_out': jnp.zeros((batch['x'].shape[0], w))
    for k, w in ((1, 12), (2, 10))
    for kind in ('dense', 'norm')
  }
  g = jax.grad(loss_fn)(params)
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    'hvp': probes.hvp(loss_fn, params, g),
    'eig': probes.top_eigenvalues(loss_fn, params, k1, k=2, num_iterations=15),
    'trace': probes.hessian_trace(loss_fn, params, k2, num_samples=8, batch_size=4),
    'density': probes.spectral_density(loss_fn, params, k3, num_probes=2, num_iterations=8),
    'curvature': probes.directional_curvature(loss_fn, params, g),
    'landscape': probes.gradient_landscape(loss_fn, params, jnp.array([0.05, 0.1, 0.2, 0.4])),
    'ics': probes.ics(loss_fn, params, new_params, [('dense1',), ('dense2',), ('head',)]),
    'activations': probes.activation_curvature(loss_of_perturbation, zero),
    'bn': probes.batchnorm_theorems(
      lambda d: loss_of_perturbation(dict(zero, dense2_out=d['y'], norm2_out=d['z'])),
      jnp.zeros((batch['x'].shape[0], 10)) + batch['x'][:, :1],
      params['norm2']['scale'],
      1e-5,
      units=jnp.arange(3),
    ),
  }
