"""Pieces every model shares: initialisers, the conv layer, and activation exposure."""

import flax.linen as nn
import jax

# The paper initialises with Glorot (Xavier) uniform; biases start at zero.
GLOROT = nn.initializers.glorot_uniform()


def conv3x3(features: int, name: str) -> nn.Module:
  """A 3x3, stride 1, SAME-padded convolution with bias and Glorot init."""
  return nn.Conv(features, (3, 3), padding='SAME', kernel_init=GLOROT, name=name)


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
