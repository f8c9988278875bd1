"""Models by name: ``get_model(name, norm=..., ...)``, and a run's model: ``from_config``.

Every model is a Flax linen module called as ``model.apply(variables, x, train=...)``
that says its own layer count (``model.num_layers``) and the prefix of its linear
modules (``model.layer_prefix``). ``layer(model, k)`` names the pieces of the paper's
layer #k (its kernel sits at ``kernel_path(model, k)``), which is what ICS and the
per-layer probes take.

Adding a model: a linen module with fields ``norm`` (a normaliser factory) and, if it
classifies, ``num_classes``; a ``layer_prefix`` and a ``num_layers`` property; layers
named by ``common.layer``; then one entry in ``MODELS``.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from bnjax.models import common, dln, mlp, vgg
from bnjax.models.norms import NORMALIZERS, get_normalizer

MODELS: dict[str, Callable[..., nn.Module]] = {
  'vgg11': functools.partial(vgg.VGG, vgg.LAYOUTS['vgg11']),
  'vgg16': functools.partial(vgg.VGG, vgg.LAYOUTS['vgg16']),
  'vgg_tiny': functools.partial(vgg.VGG, vgg.LAYOUTS['vgg_tiny']),
  'dln': dln.DeepLinearNetwork,
  'mlp': mlp.MLP,
}


def get_model(
  name: str,
  norm: str = 'none',
  norm_kwargs: dict | None = None,
  num_classes: int = 10,
  **model_kwargs: Any,
) -> nn.Module:
  """Builds model ``name`` with normaliser ``norm`` (a name in ``NORMALIZERS``).

  ``num_classes`` reaches the models that take it (the classifiers); the deep linear
  network maps inputs to outputs of its own width and ignores it.
  """
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid names: {", ".join(MODELS)}')
  factory = MODELS[name]
  if 'num_classes' in common.module_fields(factory):
    model_kwargs['num_classes'] = num_classes
  return factory(norm=get_normalizer(norm, **(norm_kwargs or {})), **model_kwargs)


def from_config(config: ml_collections.ConfigDict, num_classes: int | None) -> nn.Module:
  """The model of a run's config: ``config.model`` with ``config.norm`` and their kwargs.

  ``bn_stats='per_device'`` gives the normaliser one statistics group per device.
  ``num_classes`` is the dataset's (None for the deep linear network's regression).
  """
  num_groups = jax.device_count() if config.bn_stats == 'per_device' else 1
  norm_kwargs = dict(config.norm_kwargs.to_dict(), num_groups=num_groups)
  return get_model(
    config.model, config.norm, norm_kwargs, num_classes=num_classes, **config.model_kwargs.to_dict()
  )


def num_layers(model: nn.Module) -> int:
  """Number of linear/conv layers (the paper's 'layer #k' runs over 1..num_layers)."""
  if not hasattr(model, 'layer_prefix'):
    raise TypeError(f'not a bnjax model: {type(model).__name__}')
  return model.num_layers


def layer(model: nn.Module, k: int) -> common.Layer:
  """The names of layer #k's module, normaliser and exposed activations (``common.Layer``)."""
  if not 1 <= k <= num_layers(model):
    raise ValueError(f'layer #{k} does not exist; this model has layers 1..{num_layers(model)}')
  return common.layer(model.layer_prefix, k)


def kernel_path(model: nn.Module, k: int) -> tuple[str, str]:
  """Key path of layer #k's weight inside the ``params`` collection."""
  return (layer(model, k).linear, 'kernel')


def for_control_flow(model: nn.Module) -> nn.Module:
  """``model`` as it should be differentiated inside lax control flow (scan, loops, cond).

  On CPU a model's convolutions (those of a model with a ``conv_impl`` field, the VGGs)
  then run as shifted slices + matmul: XLA:CPU runs a convolution's gradient inside a
  loop body or cond branch as naive loops (see ``common.use_im2col``). Same parameters,
  same values; other models and other backends come back unchanged.
  """
  if hasattr(model, 'conv_impl') and common.assumed_backend() == 'cpu':
    return model.clone(conv_impl='im2col')
  return model


__all__ = [
  'MODELS',
  'NORMALIZERS',
  'for_control_flow',
  'from_config',
  'get_model',
  'get_normalizer',
  'kernel_path',
  'layer',
  'num_layers',
]
