"""The training objective and evaluation step: the one definition of the loss.

BatchNorm in training mode uses batch statistics; the objective returns the updated
running statistics separately, so the train step keeps them and probes discard them.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def loss_value(loss: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """'cross_entropy': mean softmax cross-entropy of logits [B, classes] vs labels [B];
  'sum_squared': squared error summed over samples and outputs (the DLN's loss)."""
  if loss == 'cross_entropy':
    return optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()
  if loss == 'sum_squared':
    return jnp.sum(jnp.square(outputs - targets))
  raise ValueError(f'unknown loss {loss!r}')


def make_objective(model: nn.Module, loss: str) -> Callable:
  """The training objective, BatchNorm in training mode.

  objective(params, batch_stats, batch, noise_key) -> (loss, (new_batch_stats, metrics))
  with batch = {'inputs': [B, ...], 'targets': [B] or [B, d]}. The loss is the mean
  softmax cross-entropy over the batch, or (DLN) the squared error summed over samples.
  Jitted: in a jitted program (a train chunk with its probes) every call with the same
  shapes and precision reuses one trace of the model, and JAX caches the derivatives of
  that trace, so the probes' gradients, HVPs and step sizes do not each trace and
  differentiate the model again (XLA inlines the call: the program computes the same).
  """

  def objective(params, batch_stats, batch, noise_key):
    out, updates = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      batch['inputs'],
      train=True,
      rngs={'noise': noise_key},
      mutable=['batch_stats'],
    )
    new_stats = updates.get('batch_stats', batch_stats)
    value = loss_value(loss, out, batch['targets'])
    metrics = {'train_loss': value}
    if loss == 'cross_entropy':
      metrics['train_accuracy'] = jnp.mean(jnp.argmax(out, -1) == batch['targets'])
    return value, (new_stats, metrics)

  return jax.jit(objective)


def make_eval_step(model: nn.Module, loss: str) -> Callable:
  """eval_step(params, batch_stats, batch) -> sums of loss, correct, count (running stats)."""

  def eval_step(params, batch_stats, batch):
    out = model.apply({'params': params, 'batch_stats': batch_stats}, batch['inputs'], train=False)
    mask = batch['mask']
    if loss == 'cross_entropy':
      per_example = optax.softmax_cross_entropy_with_integer_labels(out, batch['targets'])
      correct = (jnp.argmax(out, -1) == batch['targets']).astype(jnp.float32)
    else:
      per_example = jnp.sum(jnp.square(out - batch['targets']), axis=-1)
      correct = jnp.zeros_like(per_example)
    return jnp.sum(per_example * mask), jnp.sum(correct * mask), jnp.sum(mask)

  return eval_step


def noise_key_for_step(base_key: jax.Array, step: jax.Array) -> jax.Array:
  """The noisy-BN key of a step: a fresh draw every step, the same on a resumed run."""
  return jax.random.fold_in(base_key, step)


def init_variables(model: nn.Module, seed: int, sample: jax.Array) -> dict:
  """The run's initial variables ({'params', 'batch_stats'}), a function of the seed alone.

  sample: [1, ...] input of the right shape. Probes call it to recover theta_0.
  """
  init_key, _ = jax.random.split(jax.random.key(seed))
  return model.init({'params': init_key, 'noise': init_key}, sample, train=False)


def noise_base_key(seed: int) -> jax.Array:
  """The base key of the run's noisy-BN draws (see ``noise_key_for_step``)."""
  return jax.random.split(jax.random.key(seed))[1]
