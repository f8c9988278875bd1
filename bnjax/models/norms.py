"""Normalisers: every variant the paper compares, as Flax linen modules, in one registry.

Every normaliser is called as ``Norm(name=...)(y, train)`` on activations ``y`` of shape
``[batch, ..., channels]``. A *unit* (the paper's j) is one channel: for convolutions the
height and width axes count as batch axes, so statistics run over ``batch x H x W``.

BatchNorm semantics, stated once (see DESIGN.md):
- ``train=True``: batch statistics; running averages are updated only when the caller
  makes the ``batch_stats`` collection mutable (the train step does, probes discard it).
- ``train=False``: running averages, no noise.
- ``num_groups > 1``: statistics per group of consecutive examples ("ghost batches").
  The trainer sets it to the device count for per-device statistics; with the batch
  sharded over devices each group lives on one device, so no communication is needed.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnjax.models import common

Array = jax.Array


def _grouped(y: Array, num_groups: int) -> Array:
  """[B, ..., C] -> [M, C] (one group) or [G, M/G, C], M = B x H x W: statistics reduce
  over axis -2. One group stays 2-D: XLA:CPU ran the DLN's BN step (24 layers of
  [1000, 10]) 2.5x slower with a leading group axis of size 1."""
  if y.shape[0] % num_groups:
    raise ValueError(f'batch of {y.shape[0]} does not split into {num_groups} statistic groups')
  c = y.shape[-1]
  return y.reshape((-1, c) if num_groups == 1 else (num_groups, -1, c))


class Identity(nn.Module):
  """'none': the unnormalised network."""

  num_groups: int = 1  # accepted for a uniform interface; unused

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    del train
    return y


class BatchNorm(nn.Module):
  """'batch': z = scale * (y - mu_B) / sqrt(var_B + epsilon) + bias, per channel."""

  momentum: float = 0.9
  epsilon: float = 1e-5
  num_groups: int = 1

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    c = y.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    if not train:
      return scale * (y - ra_mean.value) / jnp.sqrt(ra_var.value + self.epsilon) + bias
    yg = _grouped(y, self.num_groups)
    mean = jnp.mean(yg, -2, keepdims=True)
    var = jnp.mean(jnp.square(yg - mean), -2, keepdims=True)  # biased, as the normalisation uses it
    z = (yg - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    if self.is_mutable_collection('batch_stats') and not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(-1, c).mean(0)
      ra_var.value = m * ra_var.value + (1 - m) * var.reshape(-1, c).mean(0)
    return z.reshape(y.shape)


def distributional_noise(
  key: Array, a: Array, n_mu: float, n_sigma: float, r_mu: float, r_sigma: float
) -> Array:
  """The paper's Algorithm 1 (Appendix A.2.1): a_ij <- s_ij * a_ij + m_ij.

  Per unit j (last axis): mu_j ~ U(-n_mu, n_mu), sigma_j ~ U(1, n_sigma).
  Per element i of unit j: m_ij ~ U(mu_j - r_mu, mu_j + r_mu), s_ij ~ N(sigma_j, r_sigma).
  """
  c = a.shape[-1]
  k_mu, k_sigma, k_m, k_s = jax.random.split(key, 4)
  mu = jax.random.uniform(k_mu, (c,), a.dtype, -n_mu, n_mu)
  sigma = jax.random.uniform(k_sigma, (c,), a.dtype, 1.0, n_sigma)
  m = mu + jax.random.uniform(k_m, a.shape, a.dtype, -r_mu, r_mu)
  s = sigma + r_sigma * jax.random.normal(k_s, a.shape, a.dtype)
  return common.materialized(s * a + m)  # else XLA recomputes the noise in each consumer


EVAL_NOISE = ('none', 'expectation')
NOISY = ('noisy_batch', 'noise')  # normalisers with Algorithm 1's noise (and eval_noise)


def expected_noise(a: Array, eval_noise: str, n_sigma: float) -> Array:
  """Algorithm 1's noise at evaluation: 'none' leaves ``a``; 'expectation' applies its mean,
  a <- E[s] a + E[m] with E[s] = (1 + n_sigma) / 2 and E[m] = 0."""
  if eval_noise not in EVAL_NOISE:
    raise ValueError(f'eval_noise must be one of {EVAL_NOISE}, got {eval_noise!r}')
  return a if eval_noise == 'none' else a * ((1.0 + n_sigma) / 2)


class NoisyBatchNorm(nn.Module):
  """'noisy_batch': BatchNorm, then (training only) Algorithm 1's noise from the 'noise' RNG."""

  n_mu: float = 0.5
  n_sigma: float = 1.25
  r_mu: float = 0.1
  r_sigma: float = 0.1  # a standard deviation
  momentum: float = 0.9
  epsilon: float = 1e-5
  num_groups: int = 1
  eval_noise: str = 'none'  # at evaluation: 'none' or 'expectation' (see expected_noise)

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    z = BatchNorm(self.momentum, self.epsilon, self.num_groups, name='bn')(y, train)
    if not train:
      return expected_noise(z, self.eval_noise, self.n_sigma)
    return distributional_noise(
      self.make_rng('noise'), z, self.n_mu, self.n_sigma, self.r_mu, self.r_sigma
    )


class NoiseOnly(nn.Module):
  """'noise': Algorithm 1's noise without BatchNorm (the paper: training then fails)."""

  n_mu: float = 0.5
  n_sigma: float = 1.25
  r_mu: float = 0.1
  r_sigma: float = 0.1
  num_groups: int = 1  # unused
  eval_noise: str = 'none'  # at evaluation: 'none' or 'expectation' (see expected_noise)

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    if not train:
      return expected_noise(y, self.eval_noise, self.n_sigma)
    return distributional_noise(
      self.make_rng('noise'), y, self.n_mu, self.n_sigma, self.r_mu, self.r_sigma
    )


class LpNorm(nn.Module):
  """'lp1', 'lp2', 'lpinf' (Sec. 3.3): z = scale * (y - mean(y)) / (s + epsilon) + bias.

  s is the average l_p size of the unit *before* the mean shift:
  mean|y| (p=1), sqrt(mean y^2) (p=2), max|y| (p=inf), over batch (x H x W).
  """

  p: float = 2.0
  momentum: float = 0.9
  epsilon: float = 1e-5
  num_groups: int = 1

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    c = y.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_size = self.variable('batch_stats', 'size', jnp.ones, (c,), jnp.float32)
    if not train:
      return scale * (y - ra_mean.value) / (ra_size.value + self.epsilon) + bias
    yg = _grouped(y, self.num_groups)
    mean = jnp.mean(yg, -2, keepdims=True)
    if self.p == 1:
      size = jnp.mean(jnp.abs(yg), -2, keepdims=True)
    elif self.p == 2:
      size = jnp.sqrt(jnp.mean(jnp.square(yg), -2, keepdims=True))
    elif self.p == float('inf'):
      size = jnp.max(jnp.abs(yg), -2, keepdims=True)
    else:
      raise ValueError(f'LpNorm supports p in (1, 2, inf), got {self.p}')
    z = scale * (yg - mean) / (size + self.epsilon) + bias
    if self.is_mutable_collection('batch_stats') and not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(-1, c).mean(0)
      ra_size.value = m * ra_size.value + (1 - m) * size.reshape(-1, c).mean(0)
    return z.reshape(y.shape)


class LayerNorm(nn.Module):
  """'layer': LayerNorm over every non-batch axis (Ba et al. 2016); no batch statistics."""

  epsilon: float = 1e-5
  num_groups: int = 1  # unused

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    del train
    return nn.LayerNorm(
      epsilon=self.epsilon, reduction_axes=tuple(range(1, y.ndim)), feature_axes=-1, name='ln'
    )(y)


NORMALIZERS: dict[str, Callable[..., nn.Module]] = {
  'none': Identity,
  'batch': BatchNorm,
  'noisy_batch': NoisyBatchNorm,
  'noise': NoiseOnly,
  'lp1': functools.partial(LpNorm, p=1.0),
  'lp2': functools.partial(LpNorm, p=2.0),
  'lpinf': functools.partial(LpNorm, p=float('inf')),
  'layer': LayerNorm,
}


def get_normalizer(name: str, **kwargs: Any) -> Callable[..., nn.Module]:
  """Returns a module factory ``factory(name=...)`` for normaliser ``name``.

  kwargs are fields of that normaliser (e.g. n_mu for 'noisy_batch', num_groups).
  """
  if name not in NORMALIZERS:
    raise ValueError(f'unknown normaliser {name!r}; valid names: {", ".join(NORMALIZERS)}')
  factory = NORMALIZERS[name]
  fields = common.module_fields(factory)
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f'normaliser {name!r} has no field(s) {unknown}; its fields: {sorted(fields)}')
  return functools.partial(factory, **kwargs)
