"""Evaluation on the test split: loss and accuracy over every test example, data-parallel.

A noisy normaliser (``models.norms.NOISY``) is evaluated twice: as it stands and with its
noise at its expectation (metric names ending ``_expected_noise``).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bnjax import data, objective as objective_lib
from bnjax.models import norms


def make_evaluate(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  test: data.Split | None,
  mesh: jax.sharding.Mesh,
) -> Callable:
  """Returns evaluate(state) -> {'eval_loss', 'eval_accuracy'} over ``test`` (host floats).

  Batches of ``config.eval_batch_size`` are sharded over ``mesh``'s 'data' axis, the
  parameters replicated; ``eval_accuracy`` only for ``config.loss == 'cross_entropy'``; a
  noisy normaliser adds the same names ending ``_expected_noise``; no test split: {}.
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  variants = {'': model}  # metric-name suffix -> model evaluated
  if config.norm in norms.NOISY:
    variants['_expected_noise'] = model.clone(
      norm=functools.partial(model.norm, eval_noise='expectation')
    )
  eval_fns = {
    suffix: jax.jit(
      objective_lib.make_eval_step(m, config.loss),
      in_shardings=(replicated, replicated, batch_sharding),
      out_shardings=replicated,
    )
    for suffix, m in variants.items()
  }

  def evaluate(state) -> dict[str, float]:
    if test is None:
      return {}
    totals = {suffix: np.zeros(3) for suffix in eval_fns}
    for local in data.local_eval_batches(test, config.eval_batch_size):
      batch = {
        k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()
      }
      for suffix, eval_fn in eval_fns.items():
        totals[suffix] += np.asarray(
          jax.device_get(eval_fn(state.params, state.batch_stats, batch))
        )
    out = {}
    for suffix, t in totals.items():
      out[f'eval_loss{suffix}'] = t[0] / t[2]
      if config.loss == 'cross_entropy':
        out[f'eval_accuracy{suffix}'] = t[1] / t[2]
    return out

  return evaluate
