"""The paper's deep linear network: y = W_25 ... W_1 x, every W_i 10x10, no biases.

With a normaliser, it follows layers 1 .. depth-1 (none after the output layer).
Layer k is ``dense{k}``; it exposes ``dense{k}_out`` and ``norm{k}_out``.
"""

from typing import Callable

import flax.linen as nn
import jax

from bnjax.models import common


class DeepLinearNetwork(nn.Module):
  """x: [batch, width] -> [batch, width]."""

  norm: Callable[..., nn.Module]
  depth: int = 25
  width: int = 10

  layer_prefix = 'dense'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for k in range(1, self.depth + 1):
      x = nn.Dense(self.width, use_bias=False, kernel_init=common.GLOROT, name=f'dense{k}')(x)
      if k == self.depth:
        break
      x = common.expose(self, f'dense{k}_out', x)
      x = self.norm(name=f'norm{k}')(x, train)
      x = common.expose(self, f'norm{k}_out', x)
    return x
