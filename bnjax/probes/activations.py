"""Activation-space probes: gradients and curvature wrt intermediate activations, the
paper's Theorems 4.1 and 4.2 per unit, and activation statistics (Figs. 1c, 2, 8).

A model reaches these through a function of an *additive perturbation* of its
activations: ``loss_of_perturbation(delta) -> scalar`` with ``delta`` a pytree of arrays
shaped like the activations and the operating point at ``delta = 0``. bnjax's models
expose every layer this way (Flax ``perturb``); for another model, add ``delta`` to the
activation where it is computed.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from bnjax.probes._common import result, tree_vdot, with_precision
from bnjax.probes.convolutions import for_loops

Perturbation = Any
LossOfPerturbation = Callable[[Perturbation], jax.Array]


@result
class ActivationCurvature:
  gradient: Perturbation  # dL/da, like the perturbation
  grad_norm: Perturbation  # per leaf [] ||dL/da||
  quadratic_form: Perturbation  # per leaf [] g^T H_aa g, g = dL/da of that leaf, H_aa its block


def _hvp(f, x, v):
  return jax.jvp(jax.grad(f), (x,), (v,))[1]


@with_precision
def activation_curvature(
  loss_of_perturbation: LossOfPerturbation, perturbation: Perturbation
) -> ActivationCurvature:
  """Gradient and Hessian quadratic form along it, wrt each activation leaf separately.

  ``perturbation``: zeros shaped like the activations (the operating point). For leaf
  a: g_a = dL/da and g_a^T (d^2L/da^2) g_a, the other leaves' perturbations held at 0.
  One HVP per leaf.
  """
  grad = jax.grad(loss_of_perturbation)(perturbation)
  leaves, treedef = jax.tree.flatten(grad)
  zeros = [jnp.zeros_like(g) for g in leaves]
  quad = []
  for i, g in enumerate(leaves):
    tangent = treedef.unflatten(zeros[:i] + [g] + zeros[i + 1 :])
    quad.append(tree_vdot(tangent, _hvp(loss_of_perturbation, perturbation, tangent)))
  return ActivationCurvature(
    grad, treedef.unflatten([jnp.linalg.norm(g) for g in leaves]), treedef.unflatten(quad)
  )


@result
class BatchNormTheorems:
  """Per unit j (one channel of a BN layer): both sides of the paper's Theorems 4.1, 4.2.

  y: the BN layer's input; z = gamma y_hat + beta its output; g = dL/dz;
  sigma = sqrt(var(y) + epsilon); m = elements per unit (batch x H x W).
  """

  units: jax.Array  # [u] channel indices
  grad_y_sq: jax.Array  # [u] ||dL/dy_j||^2, Thm 4.1 left side
  thm41_rhs: jax.Array  # [u] (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - c <g,y_hat>^2)
  curvature_y: jax.Array  # [u] v^T H_yy v with v = dL/dy_j, Thm 4.2 left side
  thm42_rhs: jax.Array  # [u] (gamma^2/sigma^2) v^T H_zz v - gamma/(m sigma^2) <g,y_hat> ||v||^2
  grad_z_sq: jax.Array  # [u] ||g_j||^2 (the un-normalised network's counterpart)


@with_precision
def batchnorm_theorems(
  loss_of_perturbation: Callable[[dict], jax.Array],
  y: jax.Array,
  gamma: jax.Array,
  epsilon: float,
  units: Sequence[int] | jax.Array | None = None,
) -> BatchNormTheorems:
  """Evaluates Theorems 4.1 and 4.2 for one BatchNorm layer of a real network.

  loss_of_perturbation({'y': dy, 'z': dz}) -> loss with dy added to the BN input and dz
  to the BN output (before anything else, e.g. a ReLU); y: the BN input [..., C] (one
  statistics group); gamma: the BN scale [C]; epsilon: the BN epsilon.

  Thm 4.1 is an equality; the paper states it for epsilon = 0, where c = 1/m. With
  epsilon > 0 the same algebra gives c = (1 + epsilon/sigma^2)/m, used here so that the
  equality is exact for the layer as computed. Thm 4.2 bounds the curvature along the
  gradient; its right side is computed with the paper's terms. 2 HVPs per unit.
  """
  c_dim = y.shape[-1]
  units = jnp.arange(c_dim) if units is None else jnp.asarray(units)
  flat = y.reshape(-1, c_dim)
  m = flat.shape[0]
  mean = flat.mean(0)
  var = flat.var(0)
  sigma2 = var + epsilon
  y_hat = (flat - mean) / jnp.sqrt(sigma2)  # [m, C]
  zero = {'y': jnp.zeros_like(y), 'z': jnp.zeros_like(y)}
  grads = jax.grad(loss_of_perturbation)(zero)
  gy = grads['y'].reshape(-1, c_dim)
  gz = grads['z'].reshape(-1, c_dim)

  gy_sq = jnp.sum(gy**2, 0)
  gz_sq = jnp.sum(gz**2, 0)
  g_sum = jnp.sum(gz, 0)
  g_dot_yhat = jnp.sum(gz * y_hat, 0)
  coeff = (1.0 + epsilon / sigma2) / m
  rhs41 = gamma**2 / sigma2 * (gz_sq - g_sum**2 / m - coeff * g_dot_yhat**2)

  loss_in_loop = for_loops(loss_of_perturbation)  # on CPU, loop-safe convolutions

  def curvatures(j):
    v = jnp.zeros_like(gy).at[:, j].set(gy[:, j]).reshape(y.shape)  # dL/dy restricted to unit j
    zeros = jnp.zeros_like(y)
    h_y = _hvp(loss_in_loop, zero, {'y': v, 'z': zeros})['y']
    h_z = _hvp(loss_in_loop, zero, {'y': zeros, 'z': v})['z']
    return jnp.vdot(v, h_y), jnp.vdot(v, h_z)

  quad_y, quad_z = jax.lax.map(curvatures, units)
  s2, gam = sigma2[units], gamma[units]
  rhs42 = gam**2 / s2 * quad_z - gam / (m * s2) * g_dot_yhat[units] * gy_sq[units]
  return BatchNormTheorems(units, gy_sq[units], rhs41[units], quad_y, rhs42, gz_sq[units])


@result
class ActivationStatistics:
  values: jax.Array  # [u, m] each chosen unit's values over batch (x H x W)
  mean: jax.Array  # [u] the paper's mu_t
  var: jax.Array  # [u] the paper's s^2_t (biased)


def activation_statistics(
  activations: jax.Array, units: Sequence[int] | jax.Array
) -> ActivationStatistics:
  """Values, mean and variance of chosen units (channels, last axis) over all other axes."""
  flat = activations.reshape(-1, activations.shape[-1])
  values = flat[:, jnp.asarray(units)].T
  return ActivationStatistics(values, values.mean(1), values.var(1))
