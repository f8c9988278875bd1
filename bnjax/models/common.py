"""Pieces every model shares: initialisers, the conv layer, and activation exposure."""

import flax.linen as nn
import jax
import jax.numpy as jnp

# The paper initialises with Glorot (Xavier) uniform; biases start at zero.
GLOROT = nn.initializers.glorot_uniform()

# XLA:CPU runs a 3x3 convolution on a 2x2 input far below its usual speed: batch 128,
# 512 -> 512 channels, forward 1.0 s vs 9 ms as shifted slices + one matmul, gradient
# 2.0 s vs 22 ms (measured side by side here). From 4x4 up XLA's own is as fast or
# faster. So on CPU, inputs of at most this many pixels (H * W) take the im2col path;
# GPU and TPU always keep XLA's convolution. The one place where the choice is made.
CPU_IM2COL_MAX_PIXELS = 4


def use_im2col(height: int, width: int, backend: str | None = None) -> bool:
  """Whether a 3x3 SAME convolution on an HxW input runs as shifted slices + matmul."""
  backend = backend or jax.default_backend()
  return backend == 'cpu' and height * width <= CPU_IM2COL_MAX_PIXELS


class Conv3x3(nn.Module):
  """A 3x3, stride 1, SAME-padded convolution with bias; Glorot init.

  Parameters are those of ``nn.Conv`` (kernel [3, 3, in, out], bias [out]), so
  checkpoints do not depend on which path ran. x: [B, H, W, C] -> [B, H, W, features].
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', GLOROT, (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    _, h, w, c = x.shape
    if use_im2col(h, w):
      # Nine shifted views of the zero-padded input, (row, col, channel) ordered like the
      # kernel's reshape; their backward pass is pads and slices, with no convolution.
      xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                                axis=-1)
      y = patches @ kernel.reshape(9 * c, self.features)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias


def conv3x3(features: int, name: str) -> nn.Module:
  return Conv3x3(features, name=name)


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
