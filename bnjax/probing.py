"""Probes during training: ``config.probes`` -> functions the train step runs on schedule.

Each entry of ``config.probes`` names a probe and its settings; ``every`` is its period
in steps (it runs at step 0 too; 0 disables it) and ``steps`` (optional) lists further
steps where it runs, e.g. the last one. A probe runs at theta_t on step t's own
batch, BatchNorm in training mode with the updated statistics discarded, and noisy-BN
noise from step t's key, i.e. on exactly the loss that step t's update differentiates.
Results reach ``metrics.jsonl`` as ``probe/<name>/<field>``.

  landscape        step_size_multipliers (x learning_rate): Fig. 4 / 10 panels
  ics              layers (numbers k), shift: Definition 2.1 at those layers, Fig. 3
  activations      layers, seed: one random unit's histogram, mean, variance (Figs. 1c, 2, 8)
  top_eigenvalues  k, num_iterations, seed, bn_mode: Lanczos eigenvalues and residuals
  hessian_trace    num_samples, seed, bn_mode: Hutchinson estimate and standard error
  spectral_density num_probes, num_iterations, seed, bn_mode: SLQ nodes and weights
  bn_theorems      layers, units: Theorems 4.1 / 4.2 per unit ('batch' normaliser only)
  weight_distance  (none): ||W_t - W_0|| per layer, raw and with each unit's scale removed

ICS ``shift``: 'block' (default, Definition 2.1 read literally) moves everything the
update changed below layer i: each earlier layer's kernel, bias and its normaliser's scale
and offset; 'kernel' moves the earlier kernels only (what many reproductions do).

``bn_mode`` of the Hessian probes: 'train' (default; the paper's training loss, batch
statistics), 'eval' (BN with its running averages and no noise, as PyHessian and most
PyTorch reproductions probe) or 'both'. Eval-mode fields are prefixed ``eval_``.
"""

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bnjax import models, objective as objective_lib, probes
from bnjax.models import norms

HISTOGRAM_BINS = 40


@dataclasses.dataclass(frozen=True)
class Probe:
  every: int  # period in steps; 0: only at ``steps``
  steps: tuple[int, ...]  # further steps where it runs
  fn: Callable  # (state, batch, noise_key, loss, grads) -> dict[str, jax.Array]

  def due(self, step: int) -> bool:
    """Whether the probe runs at ``step`` (a Python int, on the host)."""
    return bool(self.every and step % self.every == 0) or step in self.steps

  def due_traced(self, step: jax.Array) -> jax.Array:
    """``due`` for a traced step inside the train chunk."""
    due = (step % self.every == 0) if self.every else jnp.bool_(False)
    for s in self.steps:
      due = due | (step == s)
    return due


def _layer_numbers(model: nn.Module, name: str, layers) -> list[int]:
  n = models.num_layers(model)
  bad = [k for k in layers if not 1 <= k <= n]
  if bad:
    raise ValueError(f'probes.{name}.layers {bad} do not exist; this model has layers 1..{n}')
  return list(layers)


def build(config: ml_collections.ConfigDict, model: nn.Module,
          tx: optax.GradientTransformation) -> dict[str, Probe]:
  """The enabled probes of ``config.probes``; raises ValueError for impossible settings.

  Probes run under ``lax.cond`` (see ``train.make_train_chunk``), so they differentiate
  ``models.for_control_flow(model)``: the same function, fast inside control flow.
  """
  model = models.for_control_flow(model)
  objective = objective_lib.make_objective(model, config.loss)
  out = {}
  for name, cfg in config.probes.items():
    steps = tuple(cfg.get('steps', ()))
    if not cfg.every and not steps:
      continue
    make = _BUILDERS[name]
    out[name] = Probe(cfg.every, steps, make(cfg, config, model, objective, tx))
  return out


def _loss_fn(objective, state, batch, key):
  """The training loss as a function of params alone (the probe contract)."""
  return lambda params: objective(params, state.batch_stats, batch, key)[0]


def _loss_fns_by_mode(cfg, config, model, objective):
  """(prefix, make_loss_fn(state, batch, key)) per BN mode the probe's ``bn_mode`` asks for."""
  mode = cfg.get('bn_mode', 'train')

  def eval_loss(state, batch, key):
    del key  # running averages, no noise: no randomness

    def loss_fn(params):
      out = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch['inputs'],
                        train=False)
      return objective_lib.loss_value(config.loss, out, batch['targets'])

    return loss_fn

  train_loss = lambda state, batch, key: _loss_fn(objective, state, batch, key)
  return {'train': [('', train_loss)], 'eval': [('eval_', eval_loss)],
          'both': [('', train_loss), ('eval_', eval_loss)]}[mode]


def _per_bn_mode(cfg, config, model, objective, probe):
  """A probe fn running ``probe(loss_fn)`` -> dict once per BN mode, fields prefixed."""
  modes = _loss_fns_by_mode(cfg, config, model, objective)

  def fn(state, batch, key, loss, grads):
    del loss, grads  # train-mode values; the eval mode has its own
    out = {}
    for prefix, make_loss in modes:
      r = probe(make_loss(state, batch, key), state.params)
      out.update({prefix + k: v for k, v in r.items()})
    return out

  return fn


def _landscape(cfg, config, model, objective, tx):
  step_sizes = np.asarray(cfg.step_size_multipliers, np.float32) * config.learning_rate

  def fn(state, batch, key, loss, grads):
    r = probes.gradient_landscape(_loss_fn(objective, state, batch, key), state.params,
                                  jnp.asarray(step_sizes), gradient=grads, loss_at_start=loss)
    return {'loss': r.loss, 'grad_diff': r.grad_diff, 'beta': r.beta,
            'loss_at_start': r.loss_at_start, 'grad_norm': r.grad_norm,
            'step_sizes': jnp.asarray(step_sizes)}

  return fn


def _ics(cfg, config, model, objective, tx):
  layers = _layer_numbers(model, 'ics', cfg.layers)
  shift = cfg.get('shift', 'block')
  prefix = model.layer_prefix
  kernels = [models.kernel_path(model, k) for k in layers]

  def below(params, k):
    """What W^{t+1}_{<k} moves: earlier kernels, or earlier whole blocks (see above)."""
    if shift == 'kernel':
      return [models.kernel_path(model, j) for j in range(1, k)]
    names = (n for j in range(1, k) for n in (f'{prefix}{j}', f'norm{j}'))
    return [(n,) for n in names if n in params]  # a parameter-free normaliser has none

  def fn(state, batch, key, loss, grads):
    del loss
    loss_fn = _loss_fn(objective, state, batch, key)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    r = probes.ics(loss_fn, state.params, new_params, kernels, gradient=grads,
                   below=[below(state.params, k) for k in layers])
    return {'l2': r.l2, 'cosine': r.cosine, 'grad_norm': r.grad_norm}

  return fn


def _intermediates(model, state, batch, key):
  _, updates = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                           batch['inputs'], train=True, rngs={'noise': key},
                           mutable=['intermediates', 'batch_stats'])
  return {name: value[0] for name, value in updates['intermediates'].items()}


def _activations(cfg, config, model, objective, tx):
  layers = _layer_numbers(model, 'activations', cfg.layers)

  def fn(state, batch, key, loss, grads):
    del loss, grads
    acts = _intermediates(model, state, batch, key)
    out = {}
    for k in layers:
      a = acts[f'norm{k}_out']
      # One random unit per layer, fixed by (seed, k); channel counts are static.
      unit = int(np.random.default_rng([cfg.seed, k]).integers(a.shape[-1]))
      s = probes.activation_statistics(a, [unit])
      values = s.values[0]
      counts, edges = _histogram(values, HISTOGRAM_BINS)
      out.update({f'layer{k}/mean': s.mean[0], f'layer{k}/var': s.var[0],
                  f'layer{k}/hist': counts, f'layer{k}/edges': edges,
                  f'layer{k}/unit': jnp.asarray(unit)})
    return out

  return fn


def _histogram(values: jax.Array, bins: int) -> tuple[jax.Array, jax.Array]:
  """Counts [bins] over equal bins spanning [min, max], and the edges [bins + 1].

  Our own because jnp.histogram's searchsorted fails on arrays sharded over a mesh
  (jax 0.10.2); a scatter-add of bin indices has no such problem.
  """
  lo, hi = jnp.min(values), jnp.max(values)
  width = jnp.maximum(hi - lo, jnp.finfo(values.dtype).tiny) / bins
  idx = jnp.clip(jnp.floor((values - lo) / width).astype(jnp.int32), 0, bins - 1)
  counts = jnp.zeros(bins, jnp.int32).at[idx].add(1)
  return counts, lo + width * jnp.arange(bins + 1, dtype=values.dtype)


def _top_eigenvalues(cfg, config, model, objective, tx):
  def probe(loss_fn, params):
    r = probes.top_eigenvalues(loss_fn, params, jax.random.key(cfg.seed), k=cfg.k,
                               num_iterations=cfg.num_iterations)
    return {'eigenvalues': r.eigenvalues, 'residuals': r.residuals}

  return _per_bn_mode(cfg, config, model, objective, probe)


def _hessian_trace(cfg, config, model, objective, tx):
  def probe(loss_fn, params):
    r = probes.hessian_trace(loss_fn, params, jax.random.key(cfg.seed),
                             num_samples=cfg.num_samples)
    return {'estimate': r.estimate, 'stderr': r.stderr}

  return _per_bn_mode(cfg, config, model, objective, probe)


def _spectral_density(cfg, config, model, objective, tx):
  def probe(loss_fn, params):
    r = probes.spectral_density(loss_fn, params, jax.random.key(cfg.seed),
                                num_probes=cfg.num_probes, num_iterations=cfg.num_iterations)
    return {'nodes': r.nodes, 'weights': r.weights}

  return _per_bn_mode(cfg, config, model, objective, probe)


def _weight_distance(cfg, config, model, objective, tx):
  """Lemma 4.5: how far training moves each layer's weights from the initialisation.

  Per layer k: ||W_t - W_0||_F, and the same with each unit's scale removed,
  sqrt(sum_j min_c ||W_0[:, j] - c W_t[:, j]||^2) over c >= 0, the distance that matters
  when a normaliser after the layer makes every unit's scale irrelevant.
  """
  paths = [models.kernel_path(model, k) for k in range(1, models.num_layers(model) + 1)]

  def fn(state, batch, key, loss, grads):
    del key, loss, grads
    init = objective_lib.init_variables(model, config.seed, batch['inputs'][:1])['params']
    raw, scale_free = [], []
    for layer, kernel in paths:
      w, w0 = state.params[layer][kernel], init[layer][kernel]
      w, w0 = w.reshape(-1, w.shape[-1]), w0.reshape(-1, w0.shape[-1])  # [fan_in, units]
      raw.append(jnp.linalg.norm(w - w0))
      # The best c is max(<w0_j, w_j>, 0) / ||w_j||^2; the residual is formed directly
      # (not as ||w0||^2 - <w0, w>^2 / ||w||^2, which cancels in float32).
      c = jnp.maximum(jnp.sum(w * w0, 0), 0) / jnp.maximum(jnp.sum(w * w, 0), 1e-30)
      scale_free.append(jnp.linalg.norm(w0 - c * w))
    return {'raw': jnp.stack(raw), 'scale_free': jnp.stack(scale_free),
            'init_norm': jnp.stack([jnp.linalg.norm(init[l][k]) for l, k in paths])}

  return fn


def _bn_theorems(cfg, config, model, objective, tx):
  if config.norm != 'batch':
    raise ValueError(f"probes.bn_theorems needs norm 'batch' (got {config.norm!r}): "
                     'the theorems are about plain BatchNorm')
  if config.bn_stats != 'global':
    raise ValueError('probes.bn_theorems needs bn_stats global (one statistics group)')
  layers = _layer_numbers(model, 'bn_theorems', cfg.layers)
  epsilon = config.norm_kwargs.get('epsilon', norms.BatchNorm.epsilon)
  prefix = model.layer_prefix

  def fn(state, batch, key, loss, grads):
    del loss, grads
    acts = _intermediates(model, state, batch, key)
    out = {}
    for k in layers:
      def loss_of_perturbation(delta, k=k):
        # Flax wants every perturbation present once the collection is given.
        perturbations = {name: jnp.zeros_like(a) for name, a in acts.items()}
        perturbations.update({f'{prefix}{k}_out': delta['y'], f'norm{k}_out': delta['z']})
        variables = {'params': state.params, 'batch_stats': state.batch_stats,
                     'perturbations': perturbations}
        pred, _ = model.apply(variables, batch['inputs'], train=True, rngs={'noise': key},
                              mutable=['batch_stats'])
        return objective_lib.loss_value(config.loss, pred, batch['targets'])

      y = acts[f'{prefix}{k}_out']
      units = jnp.arange(min(cfg.units, y.shape[-1]))
      r = probes.batchnorm_theorems(loss_of_perturbation, y,
                                    state.params[f'norm{k}']['scale'], epsilon, units)
      out.update({f'layer{k}/grad_y_sq': r.grad_y_sq, f'layer{k}/thm41_rhs': r.thm41_rhs,
                  f'layer{k}/curvature_y': r.curvature_y, f'layer{k}/thm42_rhs': r.thm42_rhs,
                  f'layer{k}/grad_z_sq': r.grad_z_sq})
    return out

  return fn


_BUILDERS = {
    'landscape': _landscape,
    'ics': _ics,
    'activations': _activations,
    'top_eigenvalues': _top_eigenvalues,
    'hessian_trace': _hessian_trace,
    'spectral_density': _spectral_density,
    'bn_theorems': _bn_theorems,
    'weight_distance': _weight_distance,
}
