"""What a scheduled probe differentiates: step t's training loss, or BN's eval-mode loss.

The training loss is ``objective(params, batch_stats, batch, noise_key)``'s value: BN
with batch statistics (the updated ones discarded) and noise from step t's key. The
eval-mode loss uses BN's running averages and no noise (as PyHessian and most PyTorch
reproductions probe). ``per_bn_mode`` runs a probe on the modes its ``bn_mode`` asks for.
"""

import functools
from typing import Callable

import jax

from bnjax import objective as objective_lib
from bnjax.scheduled_probes.registry import Context, one_of

BN_MODES = ('train', 'eval', 'both')
BN_MODE = one_of(BN_MODES, default='train')  # the field of the Hessian probes


def loss_fn(objective: Callable, state, batch, key) -> Callable:
  """The training loss as a function of params alone (the probe contract)."""
  return lambda params: objective(params, state.batch_stats, batch, key)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _eval_loss(model, loss: str, params, batch_stats, batch) -> jax.Array:
  """The eval-mode loss (running averages, no noise). Jitted: probes share its trace."""
  out = model.apply({'params': params, 'batch_stats': batch_stats}, batch['inputs'], train=False)
  return objective_lib.loss_value(loss, out, batch['targets'])


def _eval_loss_fn(ctx: Context, state, batch) -> Callable:
  return lambda params: _eval_loss(ctx.model, ctx.config.loss, params, state.batch_stats, batch)


def _loss_fns_by_mode(bn_mode: str, ctx: Context) -> list[tuple[str, Callable]]:
  """(field prefix, make_loss_fn(state, batch, key)) per BN mode ``bn_mode`` asks for."""
  train = ('', lambda state, batch, key: loss_fn(ctx.objective, state, batch, key))
  evaluated = ('eval_', lambda state, batch, key: _eval_loss_fn(ctx, state, batch))
  return {'train': [train], 'eval': [evaluated], 'both': [train, evaluated]}[bn_mode]


def per_bn_mode(bn_mode: str, ctx: Context, probe: Callable) -> Callable:
  """A probe fn running ``probe(loss_fn, params)`` -> dict once per BN mode; eval-mode
  fields are prefixed ``eval_``."""
  modes = _loss_fns_by_mode(bn_mode, ctx)

  def fn(state, batch, key, loss, grads, seed):
    del loss, grads, seed  # train-mode values; the eval mode has its own
    out = {}
    for prefix, make_loss in modes:
      r = probe(make_loss(state, batch, key), state.params)
      out.update({prefix + k: v for k, v in r.items()})
    return out

  return fn


@functools.partial(jax.jit, static_argnums=0)
def intermediates(model, state, batch, key) -> dict[str, jax.Array]:
  """The activations the model exposes (``models.common.expose``), in training mode.
  Jitted: the probes that read them share one trace of the model."""
  _, updates = model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats},
    batch['inputs'],
    train=True,
    rngs={'noise': key},
    mutable=['intermediates', 'batch_stats'],
  )
  return {name: value[0] for name, value in updates['intermediates'].items()}
