"""Internal covariate shift, the paper's Definition 2.1."""

from typing import Sequence

import jax
import jax.numpy as jnp

from bnjax.probes._common import (KeyPath, LossFn, Params, check_inputs, result, select_leaves,
                                  with_precision)


@result
class ICS:
  l2: jax.Array  # [L] ||G_i - G'_i||_2 (0 without shift)
  cosine: jax.Array  # [L] cos(G_i, G'_i) (1 without shift)


@with_precision
def ics(loss_fn: LossFn, params: Params, new_params: Params, layers: Sequence[KeyPath],
        gradient: Params | None = None) -> ICS:
  """ICS of every layer in ``layers`` (key-path prefixes into params, first layer first).

  G_i  = grad wrt W_i of L(W_1^t, ..., W_k^t)                         (at ``params``)
  G'_i = grad wrt W_i of L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t)
  where W^{t+1} are the layers' values in ``new_params`` (after one optimizer update, of
  any optimizer) and parameters outside ``layers`` stay at ``params``. Costs one full
  gradient (none when ``gradient``, grad L at params, is given) plus, for i > 1, a
  gradient wrt W_i alone (backward down to layer i only).
  """
  check_inputs(loss_fn, params)
  if len(layers) == 0:
    raise ValueError('layers is empty')
  if jax.tree.structure(params) != jax.tree.structure(new_params):
    raise ValueError('params and new_params have different tree structures')
  leaves, treedef = jax.tree.flatten(params)
  new_leaves = jax.tree.leaves(new_params)
  index = [select_leaves(params, tuple(layer)) for layer in layers]
  grad_leaves = jax.tree.leaves(jax.grad(loss_fn)(params) if gradient is None else gradient)

  l2, cosine = [], []
  for i, own in enumerate(index):
    g = [grad_leaves[j] for j in own]
    if i == 0:
      g_shifted = g  # no earlier layer: G'_1 = G_1 by definition
    else:
      mixed = list(leaves)
      for earlier in index[:i]:
        for j in earlier:
          mixed[j] = new_leaves[j]

      def loss_of_layer(w, mixed=mixed, own=own):
        full = list(mixed)
        for j, wj in zip(own, w):
          full[j] = wj
        return loss_fn(treedef.unflatten(full))

      g_shifted = jax.grad(loss_of_layer)([leaves[j] for j in own])
    diff = jnp.sqrt(sum(jnp.sum(jnp.square(a - b)) for a, b in zip(g, g_shifted)))
    dot = sum(jnp.vdot(a, b) for a, b in zip(g, g_shifted))
    norms = jnp.sqrt(sum(jnp.vdot(a, a) for a in g) * sum(jnp.vdot(b, b) for b in g_shifted))
    l2.append(diff)
    cosine.append(dot / norms)
  return ICS(jnp.stack(l2), jnp.stack(cosine))
