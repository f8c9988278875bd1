"""A small MLP: Dense -> normaliser -> ReLU per hidden layer, then a Dense head.

Layer k is ``dense{k}``; it exposes ``dense{k}_out`` and ``norm{k}_out``.
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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for k, features in enumerate(self.hidden, start=1):
      y = nn.Dense(features, kernel_init=common.GLOROT, name=f'dense{k}')(x)
      y = common.expose(self, f'dense{k}_out', y)
      z = self.norm(name=f'norm{k}')(y, train)
      z = common.expose(self, f'norm{k}_out', z)
      x = nn.relu(z)
    return nn.Dense(self.num_classes, kernel_init=common.GLOROT, name='head')(x)
