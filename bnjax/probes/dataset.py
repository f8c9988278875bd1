"""Losses over many batches: dataset-level Hessians, GGNs, traces and spectra.

Every probe takes ``loss_fn(params)``; ``dataset_loss`` builds one over a fixed, ordered
sequence of batches, so that the Hessian of the loss averaged over a dataset (what
PyHessian's ``dataloader=`` and curvlinops' operators give) is available to every probe.
"""

import collections.abc
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bnjax.probes._common import LossFn, Params


def dataset_loss(
  batch_loss: Callable[[Params, Any], jax.Array], batches: Any, batch_sizes: jax.Array | None = None
) -> LossFn:
  """loss_fn(params) = sum_i n_i L(params, batch_i) / sum_i n_i over stacked batches.

  batches: a pytree of arrays, each with a leading [num_batches] axis (batch i is
  ``tree.map(lambda a: a[i], batches)``), scanned in that order on every call, so every
  product sees the same data in the same order. ``batch_loss(params, batch)`` is the mean
  loss of one batch, BatchNorm in whatever mode the caller chose (train mode: each
  batch's own statistics). batch_sizes: [num_batches] examples per batch (default: all
  equal), for a last batch padded to the common shape. Pass batches as arguments of
  your jitted function (a closed-over array is baked into the program).
  """
  message = (
    'batches must be a pytree of arrays stacked on a leading batch axis; an '
    'iterator or loader could give a different order on each product'
  )
  if isinstance(batches, collections.abc.Iterator):
    raise TypeError(message)
  leaves = jax.tree.leaves(batches)
  if not leaves or not all(hasattr(a, 'shape') and len(a.shape) >= 1 for a in leaves):
    raise TypeError(message)
  num_batches = jnp.shape(leaves[0])[0]
  if any(jnp.shape(a)[0] != num_batches for a in leaves):
    raise ValueError(f'every leaf of batches needs the same leading axis ({num_batches})')
  sizes = jnp.ones(num_batches) if batch_sizes is None else jnp.asarray(batch_sizes)
  if sizes.shape != (num_batches,):
    raise ValueError(f'batch_sizes must have shape ({num_batches},), got {sizes.shape}')
  weights = sizes / jnp.sum(sizes)

  def loss_fn(params):
    def step(total, batch_and_weight):
      batch, w = batch_and_weight
      return total + w * batch_loss(params, batch), None

    total, _ = jax.lax.scan(
      step,
      jnp.zeros((), jnp.result_type(*jax.tree.leaves(params))),
      (batches, weights.astype(jnp.result_type(*jax.tree.leaves(params)))),
    )
    return total

  return loss_fn
