"""Models by name: ``get_model(name, norm=..., ...)``.

Every model is a Flax linen module called as ``model.apply(variables, x, train=...)``.
Layer k's kernel sits at ``params[f'{model.layer_prefix}{k}']['kernel']``
(see ``kernel_path``), which is what ICS and per-layer probes take.
"""

from typing import Any

import flax.linen as nn
import jax

from bnjax.models import dln, mlp, vgg
from bnjax.models.norms import NORMALIZERS, get_normalizer

MODELS = ('vgg11', 'vgg16', 'vgg_tiny', 'dln', 'mlp')


def get_model(name: str, norm: str = 'none', norm_kwargs: dict | None = None,
              num_classes: int = 10, **model_kwargs: Any) -> nn.Module:
  """Builds model ``name`` with normaliser ``norm`` (a name in ``NORMALIZERS``)."""
  norm_factory = get_normalizer(norm, **(norm_kwargs or {}))
  if name in vgg.LAYOUTS:
    return vgg.VGG(vgg.LAYOUTS[name], norm_factory, num_classes=num_classes, **model_kwargs)
  if name == 'dln':
    return dln.DeepLinearNetwork(norm_factory, **model_kwargs)
  if name == 'mlp':
    return mlp.MLP(norm_factory, num_classes=num_classes, **model_kwargs)
  raise ValueError(f'unknown model {name!r}; valid names: {", ".join(MODELS)}')


def num_layers(model: nn.Module) -> int:
  """Number of linear/conv layers (the paper's 'layer #k' runs over 1..num_layers)."""
  if isinstance(model, vgg.VGG):
    return vgg.num_layers(model.layout)
  if isinstance(model, dln.DeepLinearNetwork):
    return model.depth
  if isinstance(model, mlp.MLP):
    return len(model.hidden)
  raise TypeError(f'not a bnjax model: {type(model).__name__}')


def for_control_flow(model: nn.Module) -> nn.Module:
  """``model`` as it should be differentiated inside lax control flow (scan, loops, cond).

  On CPU a VGG's convolutions then run as shifted slices + matmul: XLA:CPU runs a
  convolution's gradient inside a loop body or cond branch as naive loops (see
  ``common.use_im2col``). Same parameters, same values; other models and other
  backends come back unchanged.
  """
  if isinstance(model, vgg.VGG) and jax.default_backend() == 'cpu':
    return model.clone(conv_impl='im2col')
  return model


def kernel_path(model: nn.Module, k: int) -> tuple[str, str]:
  """Key path of layer #k's weight inside the ``params`` collection."""
  if not 1 <= k <= num_layers(model):
    raise ValueError(f'layer #{k} does not exist; this model has layers 1..{num_layers(model)}')
  return (f'{model.layer_prefix}{k}', 'kernel')


__all__ = ['MODELS', 'NORMALIZERS', 'for_control_flow', 'get_model', 'get_normalizer', 'kernel_path', 'num_layers']
