"""Internal covariate shift, the paper's Definition 2.1."""

from typing import Sequence

import jax
import jax.numpy as jnp

from bnjax.probes._common import (
  Block,
  KeyPath,
  LossFn,
  Params,
  check_inputs,
  result,
  select_leaves,
  with_precision,
)


@result
class ICS:
  l2: jax.Array  # [L] ||G_i - G'_i||_2 (0 without shift)
  cosine: jax.Array  # [L] cos(G_i, G'_i) (1 without shift)
  grad_norm: jax.Array  # [L] ||G_i||_2 (so that ||G_i - G'_i|| / ||G_i|| is the relative shift)


@with_precision
def ics(
  loss_fn: LossFn,
  params: Params,
  new_params: Params,
  layers: Sequence[KeyPath],
  gradient: Params | None = None,
  below: Sequence[Block] | None = None,
) -> ICS:
  """ICS of every layer in ``layers`` (key-path prefixes into params, first layer first).

  G_i  = grad wrt W_i of L(W_1^t, ..., W_k^t)                         (at ``params``)
  G'_i = grad wrt W_i of L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t)
  where W^{t+1} are values in ``new_params`` (after one optimizer update, of any
  optimizer). ``below[i]`` names what W^{t+1}_{<i} moves for layer i: a key path, a list
  of key paths (``[]`` for nothing) or a predicate on leaf paths. By default it is
  ``layers[:i]``; pass whole blocks (each earlier layer's weights, biases and its
  normaliser's scale and offset) to read Definition 2.1 literally, and then ``layers``
  need list only the layers you want. Every other parameter stays at ``params``.
  Costs one full gradient (none when ``gradient``, grad L at params, is given) plus, for
  each layer with something below it, a gradient wrt W_i alone.
  """
  check_inputs(loss_fn, params)
  if len(layers) == 0:
    raise ValueError('layers is empty')
  if jax.tree.structure(params) != jax.tree.structure(new_params):
    raise ValueError('params and new_params have different tree structures')
  leaves, treedef = jax.tree.flatten(params)
  new_leaves = jax.tree.leaves(new_params)
  index = [select_leaves(params, tuple(layer)) for layer in layers]
  if below is None:
    shifted = [sorted({j for earlier in index[:i] for j in earlier}) for i in range(len(index))]
  elif len(below) != len(layers):
    raise ValueError(f'below has {len(below)} entries for {len(layers)} layers')
  else:
    shifted = [[] if _is_empty(b) else select_leaves(params, b) for b in below]
  for layer, own, moved in zip(layers, index, shifted):
    if set(own) & set(moved):
      raise ValueError(f"below of layer {layer} moves the layer's own parameters")
  grad_leaves = jax.tree.leaves(jax.grad(loss_fn)(params) if gradient is None else gradient)

  l2, cosine, grad_norm = [], [], []
  for own, moved in zip(index, shifted):
    g = [grad_leaves[j] for j in own]
    if not moved:
      g_shifted = g  # nothing below: G'_1 = G_1 by definition
    else:
      mixed = list(leaves)
      for j in moved:
        mixed[j] = new_leaves[j]

      def loss_of_layer(w, mixed=mixed, own=own):
        full = list(mixed)
        for j, wj in zip(own, w):
          full[j] = wj
        return loss_fn(treedef.unflatten(full))

      g_shifted = jax.grad(loss_of_layer)([leaves[j] for j in own])
    diff = jnp.sqrt(sum(jnp.sum(jnp.square(a - b)) for a, b in zip(g, g_shifted)))
    dot = sum(jnp.vdot(a, b) for a, b in zip(g, g_shifted))
    g_sq = sum(jnp.vdot(a, a) for a in g)
    norms = jnp.sqrt(g_sq * sum(jnp.vdot(b, b) for b in g_shifted))
    l2.append(diff)
    cosine.append(dot / norms)
    grad_norm.append(jnp.sqrt(g_sq))
  return ICS(jnp.stack(l2), jnp.stack(cosine), jnp.stack(grad_norm))


def _is_empty(block: Block) -> bool:
  return isinstance(block, (list, tuple)) and len(block) == 0
