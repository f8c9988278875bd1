"""A run as analysis sees it: its config, model, parameters at a step, evaluation batches, loss.

Parameters at step t > 0 come from ``checkpoints/<t>/``, read only once orbax has
committed it (``layout.COMMIT_MARKER``), with a plain orbax handler: no checkpoint
manager (which may clean up or wait on the directory a training writes), no lock, no
write. Step 0 is not checkpointed by the trainer; it is rebuilt exactly as the trainer
builds it, ``objective.init_variables(model, config.seed, sample)``.
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bnjax import data, experiments, models, objective, probes
from bnjax.analyze import layout
from bnjax.analyze.table import AnalysisError

BN_MODES = ('train', 'eval')
CHECKPOINT_ITEM = 'default'  # the item name orbax's manager gives a StandardSave


def _merged(base: dict, saved: dict) -> dict:
  """``saved`` with the fields it lacks (added to bnjax since the run) from ``base``."""
  out = dict(base)
  for k, v in saved.items():
    out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
  return out


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The run's config.json as a ConfigDict, fields added since filled with defaults."""
  base = json.loads(experiments.base().to_json())
  return ml_collections.ConfigDict(_merged(base, layout.read_config(workdir)))


@functools.lru_cache(maxsize=2)
def _dataset(
  name: str, seed: int, cache_dir: str, tfds_data_dir: str, skip_unreadable: bool
) -> data.Dataset:
  return data.load(
    name,
    seed=seed,
    cache_dir=cache_dir,
    tfds_data_dir=tfds_data_dir,
    skip_unreadable_images=skip_unreadable,
  )


@dataclasses.dataclass(frozen=True)
class Run:
  """What every checkpoint of one workdir is probed with."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: nn.Module
  batches: dict[str, np.ndarray]  # [num_batches, batch_size, ...] and 'noise' [num_batches, 2]

  @property
  def sample(self) -> jax.Array:
    """The [1, ...] input the trainer initialises with."""
    return jnp.zeros((1,) + self.batches['inputs'].shape[2:], jnp.float32)


def load_run(
  workdir: pathlib.Path, num_batches: int, data_seed: int | None, noise_seed: int
) -> Run:
  """The run in ``workdir`` with its evaluation batches: training batches 0 .. N-1 of the
  run's batch size in the order ``data_seed`` (None: the run's seed) shuffles them, and
  one noisy-BN key per batch from ``noise_seed``."""
  config = load_config(workdir)
  dataset = _dataset(
    config.dataset,
    config.seed,
    config.data.cache_dir,
    config.data.tfds_data_dir,
    config.data.skip_unreadable_images,
  )
  seed = config.seed if data_seed is None else data_seed
  batches = data.local_train_batches(dataset.train, config.batch_size, seed, 0, num_batches)
  keys = jax.random.split(jax.random.key(noise_seed), num_batches)
  batches['noise'] = np.asarray(jax.random.key_data(keys))
  return Run(workdir, config, models.from_config(config, dataset.num_classes), batches)


def restore(run: Run, step: int) -> tuple[Any, Any]:
  """(params, batch_stats) at ``step``: 0 rebuilt from config.seed, else the committed
  checkpoint. Raises AnalysisError for a step with no committed checkpoint."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # as restored: one compile
  if step == 0:
    variables = objective.init_variables(run.model, run.config.seed, run.sample)
    return jax.device_put((variables['params'], variables.get('batch_stats', {})), device)
  step_dir = (run.workdir / layout.CHECKPOINTS / str(step)).absolute()
  if not (step_dir / layout.COMMIT_MARKER).exists():
    raise AnalysisError(
      f'{run.workdir}: no committed checkpoint at step {step} (or deleted '
      'since listed: max_checkpoints_to_keep)'
    )
  handler = ocp.StandardCheckpointHandler()
  try:
    item = step_dir / CHECKPOINT_ITEM
    abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), handler.metadata(item).tree
    )
    state = handler.restore(item, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax and tensorstore raise many types for missing or cut files
    gone = '' if step_dir.exists() else ' (deleted meanwhile: max_checkpoints_to_keep)'
    raise AnalysisError(
      f'{run.workdir}: checkpoint at step {step} cannot be read{gone}: '
      f'{type(e).__name__}: {(str(e).splitlines() or [""])[0][:160]}'
    ) from e
  finally:
    handler.close()
  return state['params'], state.get('batch_stats', {})


def batch_outputs(run: Run, bn_mode: str) -> Callable:
  """outputs(params, batch_stats, batch) -> the model's outputs [B, ...] on one evaluation
  batch: logits, or the DLN's predictions.

  'train': as the training objective computes them (BN with the batch's statistics,
  noisy-BN noise from the batch's key, the updated statistics dropped); 'eval': BN with
  the running averages ``batch_stats``, no noise (as ``scheduled_probes.losses``' eval mode).
  """
  if bn_mode not in BN_MODES:
    raise AnalysisError(f'--bn-mode must be one of {", ".join(BN_MODES)}, got {bn_mode!r}')
  train = bn_mode == 'train'

  def outputs(params, batch_stats, batch):
    variables = {'params': params, 'batch_stats': batch_stats}
    if not train:
      return run.model.apply(variables, batch['inputs'], train=False)
    rngs = {'noise': jax.random.wrap_key_data(batch['noise'])}
    out, _ = run.model.apply(
      variables, batch['inputs'], train=True, rngs=rngs, mutable=['batch_stats']
    )
    return out

  return outputs


def batch_loss(run: Run, bn_mode: str) -> Callable:
  """batch_loss(params, batch_stats, batch) -> the run's loss on one evaluation batch (the
  training objective's loss in 'train' mode; see ``batch_outputs``)."""
  outputs, loss = batch_outputs(run, bn_mode), run.config.loss
  return lambda params, batch_stats, batch: objective.loss_value(
    loss, outputs(params, batch_stats, batch), batch['targets']
  )


def per_example_loss(
  run: Run, bn_mode: str, batch_stats: Any, batches: dict, key: jax.Array
) -> probes.PerExampleLoss:
  """The evaluation batches' loss as a ``probes.PerExampleLoss`` (for operator='ef',
  'fisher', 'fisher_exact'), equal to ``dataset_loss`` of ``batch_loss``: every batch's
  outputs (each with its own BN statistics in 'train' mode) as N = K x B examples.

  Cross-entropy: softmax cross-entropy per example, reduction 'mean'. The DLN's summed
  squared error: l_n = ||f_n - y_n||^2 / K with reduction 'sum' (K batches averaged).
  ``key``: the Monte-Carlo Fisher's labels.
  """
  outputs = batch_outputs(run, bn_mode)
  num_batches = batches['inputs'].shape[0]

  def all_outputs(params):  # [K, B, ...] -> [K * B, ...]
    out = jax.vmap(lambda b: outputs(params, batch_stats, b))(batches)
    return out.reshape((-1,) + out.shape[2:])

  targets = batches['targets'].reshape((-1,) + batches['targets'].shape[2:])
  if run.config.loss == 'cross_entropy':
    return probes.PerExampleLoss(all_outputs, targets, key=key)
  return probes.PerExampleLoss(
    all_outputs,
    targets,
    reduction='sum',
    key=key,
    example_loss=lambda f, y: jnp.sum(jnp.square(f - y), axis=-1) / num_batches,
  )
