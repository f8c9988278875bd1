"""VGG for 32x32 inputs (CIFAR): 3x3 convolutions, normaliser before the ReLU, 2x2 max-pools.

Layer #k of the paper is the k-th convolution counted from the input (1-based), named by
``common.layer('conv', k)``: it exposes y (the convolution's output) and z (after the
normaliser and any noise, before the ReLU) as perturbations and intermediates.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax

from bnjax.models import common

LAYOUTS: dict[str, tuple] = {
  # VGG-11, configuration 'A' of Simonyan & Zisserman (2015).
  'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  # VGG-16 (configuration 'D'), the paper's 13 conv layers; the paper's default.
  'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
  # Two conv layers, for tests.
  'vgg_tiny': (8, 'M', 16, 'M'),
}


class VGG(nn.Module):
  """x: [batch, 32, 32, channels] float32 -> logits [batch, num_classes]."""

  layout: Sequence
  norm: Callable[..., nn.Module]
  num_classes: int = 10
  width: float = 1.0  # multiplies every conv's channel count (the :local configs shrink it)
  conv_impl: str = 'auto'  # 'auto', 'xla' or 'im2col': see common.use_im2col

  layer_prefix = 'conv'

  @property
  def num_layers(self) -> int:
    return sum(1 for entry in self.layout if entry != 'M')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k = 0
    for entry in self.layout:
      if entry == 'M':
        x = common.max_pool_2x2(x)
        continue
      k += 1
      names = common.layer(self.layer_prefix, k)
      features = max(1, int(round(entry * self.width)))
      y = common.conv3x3(features, names.linear, self.conv_impl)(x)
      y = common.expose(self, names.linear_out, y)
      z = self.norm(name=names.norm)(y, train)
      z = common.expose(self, names.norm_out, z)
      x = nn.relu(z)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, kernel_init=common.GLOROT, name='head')(x)
