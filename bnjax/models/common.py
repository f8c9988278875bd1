"""Pieces every model shares: layer names, initialisers, the conv layer, activation exposure."""

import dataclasses
import functools
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Layer:
  """The names of the paper's layer #k (1-based) inside a model; the one place they are spelt.

  ``linear``: the conv / dense module, ``params[linear]['kernel']`` its weight.
  ``norm``: its normaliser (a parameter-free normaliser has no ``params[norm]``).
  ``linear_out``, ``norm_out``: y (the linear output) and z (after the normaliser and any
  noise, before the ReLU), exposed as perturbations and intermediates (see ``expose``).
  """

  linear: str
  norm: str
  linear_out: str
  norm_out: str


def layer(prefix: str, k: int) -> Layer:
  """Layer #k of a model whose linear modules are ``{prefix}1``, ``{prefix}2``, ..."""
  return Layer(f'{prefix}{k}', f'norm{k}', f'{prefix}{k}_out', f'norm{k}_out')


def module_fields(factory: Callable[..., nn.Module]) -> set[str]:
  """The fields a module factory (a linen class or a ``functools.partial`` of one) takes."""
  cls = factory.func if isinstance(factory, functools.partial) else factory
  return {f for f in cls.__dataclass_fields__ if f not in ('parent', 'name')}


# The paper initialises with Glorot (Xavier) uniform; biases start at zero.
GLOROT = nn.initializers.glorot_uniform()

# Two facts of XLA:CPU (jaxlib 0.10.2) decide how a 3x3 convolution runs there; GPU and
# TPU always keep XLA's convolution.
# - On a 2x2 input XLA's convolution runs far below its usual speed: batch 128,
#   512 -> 512 channels, forward 1.0 s vs 9 ms as shifted slices + one matmul, gradient
#   2.0 s vs 22 ms (measured side by side here). From 4x4 up XLA's own is faster.
# - XLA:CPU hands a convolution to its fast library only after its ConvCanonicalization
#   pass has rewritten it, and that pass visits the entry computation alone. Inside a
#   lax.scan / fori_loop / while body or a lax.cond branch the backward convolutions
#   stay as naive loops: a VGG-11 gradient (batch 16) takes 1.9 s there vs 0.1 s outside.
#   Shifted slices + matmul contain no convolution, so they run at full speed anywhere.
# 'auto' therefore means im2col for 2x2 inputs on CPU; code that differentiates a model
# inside control flow asks for 'im2col' (``bnjax.models.for_control_flow``). This is
# the one place where the choice is made.
# bnjax.probes.convolutions.CPU_MATMUL_MAX_PIXELS is the same number for the probes'
# convolution rewrite (the probe library imports nothing else of bnjax, so it keeps its
# own); tests/test_models.py checks that the two agree.
CPU_IM2COL_MAX_PIXELS = 4


ASSUME_BACKEND = 'BNJAX_ASSUME_BACKEND'


def assumed_backend() -> str:
  """The backend whose code paths the models take: ``$BNJAX_ASSUME_BACKEND`` when set (e.g.
  'tpu', so that a test or ``benchmarks/accelerator.py --force-accelerator-paths`` runs an
  accelerator's choices on a CPU), else JAX's default backend. Read at each call.
  (bnjax.probes keeps its own copy: it imports nothing else of bnjax.)"""
  return os.environ.get(ASSUME_BACKEND) or jax.default_backend()


CONV_IMPLS = ('auto', 'xla', 'im2col')


def use_im2col(height: int, width: int, impl: str = 'auto', backend: str | None = None) -> bool:
  """Whether a 3x3 SAME convolution on an HxW input runs as shifted slices + matmul.

  impl: 'xla' (never), 'im2col' (always) or 'auto' (CPU and at most
  ``CPU_IM2COL_MAX_PIXELS`` pixels).
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f'unknown conv_impl {impl!r}; valid: {", ".join(CONV_IMPLS)}')
  if impl != 'auto':
    return impl == 'im2col'
  return (backend or assumed_backend()) == 'cpu' and height * width <= CPU_IM2COL_MAX_PIXELS


def materialized(x: jax.Array) -> jax.Array:
  """``x`` itself, stored once on CPU instead of recomputed inside each consumer.

  XLA:CPU fuses cheap elementwise producers (BatchNorm's normalisation, the ReLU, the
  noise of Algorithm 1) into every consumer, including the transposes it adds before a
  weight-gradient convolution, which then recompute them in transposed order. A
  division by a full tensor counts as expensive, so XLA computes it once and the
  consumers read it. Measured here: one VGG-16 layer (batch 128, 32x32, 64 channels),
  activation, convolution and weight gradient, 126-150 ms without, 97-104 ms with; the
  noisy-BN VGG-16 step at width 0.25, 405-436 ms with its noise recomputed against
  232-251 ms stored once (by a scalar divisor then; this helper times the same).
  Values: x / (1 + 0 x), equal to x for finite x (infinities become NaN); derivatives
  are those of the identity (a custom JVP), so gradients and HVPs are exact and cost
  nothing extra. Other backends fuse differently: there ``x`` is returned untouched.
  """
  return _stored_once(x) if assumed_backend() == 'cpu' else x


@jax.custom_jvp
def _stored_once(x: jax.Array) -> jax.Array:
  return x / (1 + 0 * x)


@_stored_once.defjvp
def _stored_once_jvp(primals, tangents):
  return _stored_once(primals[0]), tangents[0]


class Conv3x3(nn.Module):
  """A 3x3, stride 1, SAME-padded convolution with bias; Glorot init.

  Parameters are those of ``nn.Conv`` (kernel [3, 3, in, out], bias [out]), so
  checkpoints do not depend on which path ran. x: [B, H, W, C] -> [B, H, W, features].
  """

  features: int
  impl: str = 'auto'  # see use_im2col

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', GLOROT, (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    _, h, w, c = x.shape
    if use_im2col(h, w, self.impl):
      # Nine shifted views of the zero-padded input, (row, col, channel) ordered like the
      # kernel's reshape; their backward pass is pads and slices, with no convolution.
      xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      patches = jnp.concatenate(
        [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
      )
      y = patches @ kernel.reshape(9 * c, self.features)
    else:
      y = jax.lax.conv_general_dilated(
        materialized(x),
        kernel,
        (1, 1),
        'SAME',  # x stored once
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
    return y + bias


def conv3x3(features: int, name: str, impl: str = 'auto') -> nn.Module:
  return Conv3x3(features, impl, name=name)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2: [B, H, W, C] -> [B, H/2, W/2, C] (H and W even).

  The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as three
  elementwise maxima of strided views. XLA:CPU lowers the gradient of a reduce-window
  max to select-and-scatter, which it expands into iotas, a scatter and reduce-windows
  (the top items of a profile): the VGG-11 BN train step, batch 128, took 542 ms with
  ``nn.max_pool`` and 456 ms with maxima, back to back here. The gradient differs only
  on ties: a tie splits it evenly where ``nn.max_pool`` routes it to the first maximum.
  After a ReLU the common tie is at 0, whose gradient the ReLU zeroes either way.
  ``x.reshape(...).max(axis=(2, 4))`` is as fast, but XLA:CPU's unoptimised build
  (``jax_disable_most_optimizations``, as in the tests) got the VGG's gradient wrong
  with it (README, Performance).
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_2x2 needs an even height and width; got {h}x{w}')
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return jnp.maximum(
    jnp.maximum(x[:, :, 0, :, 0], x[:, :, 0, :, 1]), jnp.maximum(x[:, :, 1, :, 0], x[:, :, 1, :, 1])
  )


def expose(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
  """Makes activation ``x`` reachable by probes without changing the forward pass.

  - ``perturbations/name``: an additive zero (Flax ``perturb``); the gradient with
    respect to it is the gradient with respect to ``x``, so activation-space probes
    differentiate the loss as a function of a perturbation of ``x``.
  - ``intermediates/name``: ``x`` itself when the caller makes that collection mutable.
  """
  x = module.perturb(name, x)
  module.sow('intermediates', name, x)
  return x
