"""The paper's deep linear network: y = W_25 ... W_1 x, every W_i 10x10, no biases.

With a normaliser, it follows layers 1 .. depth-1 (none after the output layer).
Layer k is named by ``common.layer('dense', k)``; layers 1 .. depth-1 expose y and z.
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

  @property
  def num_layers(self) -> int:
    return self.depth

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for k in range(1, self.depth + 1):
      names = common.layer(self.layer_prefix, k)
      x = nn.Dense(self.width, use_bias=False, kernel_init=common.GLOROT, name=names.linear)(x)
      if k == self.depth:
        break
      x = common.expose(self, names.linear_out, x)
      x = self.norm(name=names.norm)(x, train)
      x = common.expose(self, names.norm_out, x)
    return x
