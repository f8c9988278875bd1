"""A small MLP: Dense -> normaliser -> ReLU per hidden layer, then a Dense head.

Layer k is named by ``common.layer('dense', k)``; it exposes y and z.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax

from bnjax.models import common


class MLP(nn.Module):
  """x: [batch, ...] (flattened) -> logits [batch, num_classes]."""

  norm: Callable[..., nn.Module]
  hidden: Sequence[int] = (64, 64)
  num_classes: int = 10

  layer_prefix = 'dense'

  @property
  def num_layers(self) -> int:
    return len(self.hidden)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for k, features in enumerate(self.hidden, start=1):
      names = common.layer(self.layer_prefix, k)
      y = nn.Dense(features, kernel_init=common.GLOROT, name=names.linear)(x)
      y = common.expose(self, names.linear_out, y)
      z = self.norm(name=names.norm)(y, train)
      z = common.expose(self, names.norm_out, z)
      x = nn.relu(z)
    return nn.Dense(self.num_classes, kernel_init=common.GLOROT, name='head')(x)
