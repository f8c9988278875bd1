"""The probes the trainer runs on schedule, each declared once: fields, defaults, checks, builder.

Results reach ``metrics.jsonl`` as ``probe/<name>/<field>``; per-layer fields as
``probe/<name>/layer<k>/<field>``. Besides ``every`` and ``steps`` (see the package):

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
statistics), 'eval' (BN with its running averages and no noise) or 'both'. Eval-mode
fields are prefixed ``eval_`` (see ``losses``).

Adding a probe: a builder here, decorated with ``register`` (its fields, with defaults
and checks), a line in the table above, and its test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnjax import models, objective as objective_lib, probes
from bnjax.models import norms
from bnjax.scheduled_probes import losses
from bnjax.scheduled_probes.registry import (
  ANY,
  LAYERS,
  POSITIVE_NUMBERS,
  Context,
  layer_numbers,
  one_of,
  register,
)

HISTOGRAM_BINS = 40
ICS_SHIFTS = ('block', 'kernel')


def _per_layer(k: int, fields: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Layer #k's fields, named ``layer<k>/<field>`` (plots read them back by that name)."""
  return {f'layer{k}/{name}': value for name, value in fields.items()}


@register('landscape', step_size_multipliers=POSITIVE_NUMBERS)
def _landscape(settings, ctx: Context):
  step_sizes = np.asarray(settings.step_size_multipliers, np.float32) * ctx.config.learning_rate

  def fn(state, batch, key, loss, grads, seed):
    del seed
    r = probes.gradient_landscape(
      losses.loss_fn(ctx.objective, state, batch, key),
      state.params,
      jnp.asarray(step_sizes),
      gradient=grads,
      loss_at_start=loss,
    )
    return {
      'loss': r.loss,
      'grad_diff': r.grad_diff,
      'beta': r.beta,
      'loss_at_start': r.loss_at_start,
      'grad_norm': r.grad_norm,
      'step_sizes': jnp.asarray(step_sizes),
    }

  return fn


@register('ics', layers=LAYERS, shift=one_of(ICS_SHIFTS, default='block'))
def _ics(settings, ctx: Context):
  model = ctx.model
  layers = layer_numbers(ctx, 'ics', settings.layers)
  kernels = [models.kernel_path(model, k) for k in layers]

  def below(params, k):
    """What W^{t+1}_{<k} moves: earlier kernels, or earlier whole blocks (see above)."""
    if settings.shift == 'kernel':
      return [models.kernel_path(model, j) for j in range(1, k)]
    blocks = [models.layer(model, j) for j in range(1, k)]
    names = (n for block in blocks for n in (block.linear, block.norm))
    return [(n,) for n in names if n in params]  # a parameter-free normaliser has none

  def fn(state, batch, key, loss, grads, seed):
    del loss, seed
    loss_fn = losses.loss_fn(ctx.objective, state, batch, key)
    updates, _ = ctx.tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    r = probes.ics(
      loss_fn,
      state.params,
      new_params,
      kernels,
      gradient=grads,
      below=[below(state.params, k) for k in layers],
    )
    return {'l2': r.l2, 'cosine': r.cosine, 'grad_norm': r.grad_norm}

  return fn


@register('activations', layers=LAYERS, seed=ANY)
def _activations(settings, ctx: Context):
  layers = layer_numbers(ctx, 'activations', settings.layers)

  def fn(state, batch, key, loss, grads, seed):
    del loss, grads, seed
    acts = losses.intermediates(ctx.model, state, batch, key)
    out = {}
    for k in layers:
      a = acts[models.layer(ctx.model, k).norm_out]
      # One random unit per layer, fixed by (seed, k); channel counts are static.
      unit = int(np.random.default_rng([settings.seed, k]).integers(a.shape[-1]))
      s = probes.activation_statistics(a, [unit])
      counts, edges = _histogram(s.values[0], HISTOGRAM_BINS)
      out.update(
        _per_layer(
          k,
          {
            'mean': s.mean[0],
            'var': s.var[0],
            'hist': counts,
            'edges': edges,
            'unit': jnp.asarray(unit),
          },
        )
      )
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


@register('top_eigenvalues', k=ANY, num_iterations=ANY, seed=ANY, bn_mode=losses.BN_MODE)
def _top_eigenvalues(settings, ctx: Context):
  def probe(loss_fn, params):
    r = probes.top_eigenvalues(
      loss_fn,
      params,
      jax.random.key(settings.seed),
      k=settings.k,
      num_iterations=settings.num_iterations,
    )
    return {'eigenvalues': r.eigenvalues, 'residuals': r.residuals}

  return losses.per_bn_mode(settings.bn_mode, ctx, probe)


@register('hessian_trace', num_samples=ANY, seed=ANY, bn_mode=losses.BN_MODE)
def _hessian_trace(settings, ctx: Context):
  def probe(loss_fn, params):
    r = probes.hessian_trace(
      loss_fn, params, jax.random.key(settings.seed), num_samples=settings.num_samples
    )
    return {'estimate': r.estimate, 'stderr': r.stderr}

  return losses.per_bn_mode(settings.bn_mode, ctx, probe)


@register('spectral_density', num_probes=ANY, num_iterations=ANY, seed=ANY, bn_mode=losses.BN_MODE)
def _spectral_density(settings, ctx: Context):
  def probe(loss_fn, params):
    r = probes.spectral_density(
      loss_fn,
      params,
      jax.random.key(settings.seed),
      num_probes=settings.num_probes,
      num_iterations=settings.num_iterations,
    )
    return {'nodes': r.nodes, 'weights': r.weights}

  return losses.per_bn_mode(settings.bn_mode, ctx, probe)


@register('bn_theorems', layers=LAYERS, units=ANY)
def _bn_theorems(settings, ctx: Context):
  config = ctx.config
  if config.norm != 'batch':
    raise ValueError(
      f"probes.bn_theorems needs norm 'batch' (got {config.norm!r}): "
      'the theorems are about plain BatchNorm'
    )
  if config.bn_stats != 'global':
    raise ValueError('probes.bn_theorems needs bn_stats global (one statistics group)')
  layers = layer_numbers(ctx, 'bn_theorems', settings.layers)
  epsilon = config.norm_kwargs.get('epsilon', norms.BatchNorm.epsilon)
  return _bn_theorems_probe(ctx.model, config.loss, layers, settings.units, epsilon)


def _bn_theorems_probe(model, loss_name: str, layers: list[int], max_units: int, epsilon: float):
  """fn(state, batch, key, loss, grads, seed) -> both sides of Theorems 4.1 and 4.2 at each of
  ``layers`` (BatchNorm with ``epsilon``), for its first ``max_units`` units."""

  def fn(state, batch, key, loss, grads, seed):
    del loss, grads, seed
    acts = losses.intermediates(model, state, batch, key)

    # Jitted: every layer's gradient and HVPs reuse one trace of the model (as in
    # objective.make_objective). Flax wants every perturbation present once the
    # collection is given: zeros where nothing is perturbed.
    @jax.jit
    def perturbed_loss(perturbations):
      variables = {
        'params': state.params,
        'batch_stats': state.batch_stats,
        'perturbations': perturbations,
      }
      pred, _ = model.apply(
        variables, batch['inputs'], train=True, rngs={'noise': key}, mutable=['batch_stats']
      )
      return objective_lib.loss_value(loss_name, pred, batch['targets'])

    zeros = {name: jnp.zeros_like(a) for name, a in acts.items()}
    out = {}
    for k in layers:
      names = models.layer(model, k)

      def loss_of_perturbation(delta, names=names):
        return perturbed_loss({**zeros, names.linear_out: delta['y'], names.norm_out: delta['z']})

      y = acts[names.linear_out]
      units = jnp.arange(min(max_units, y.shape[-1]))
      r = probes.batchnorm_theorems(
        loss_of_perturbation, y, state.params[names.norm]['scale'], epsilon, units
      )
      out.update(
        _per_layer(
          k,
          {
            'grad_y_sq': r.grad_y_sq,
            'thm41_rhs': r.thm41_rhs,
            'curvature_y': r.curvature_y,
            'thm42_rhs': r.thm42_rhs,
            'grad_z_sq': r.grad_z_sq,
          },
        )
      )
    return out

  return fn


@register('weight_distance')
def _weight_distance(settings, ctx: Context):
  """Lemma 4.5: how far training moves each layer's weights from the initialisation.

  Per layer k: ||W_t - W_0||_F, and the same with each unit's scale removed,
  sqrt(sum_j min_c ||W_0[:, j] - c W_t[:, j]||^2) over c >= 0, the distance that matters
  when a normaliser after the layer makes every unit's scale irrelevant. W_0 is
  recomputed from the seed in this probe's program, which XLA may round unlike the
  initialiser's: at step 0 the distance is float32 rounding (2-3e-8 of ||W_0|| seen),
  not exactly 0.
  """
  del settings  # none of its own
  model = ctx.model
  paths = [models.kernel_path(model, k) for k in range(1, models.num_layers(model) + 1)]

  def fn(state, batch, key, loss, grads, seed):
    del key, loss, grads
    # theta_0 from the seed the program is given (not ctx.config.seed, which would make
    # each seed a program of its own)
    init = objective_lib.init_variables(model, seed, batch['inputs'][:1])['params']
    raw, scale_free = [], []
    for layer, kernel in paths:
      w, w0 = state.params[layer][kernel], init[layer][kernel]
      w, w0 = w.reshape(-1, w.shape[-1]), w0.reshape(-1, w0.shape[-1])  # [fan_in, units]
      raw.append(jnp.linalg.norm(w - w0))
      # The best c is max(<w0_j, w_j>, 0) / ||w_j||^2; the residual is formed directly
      # (not as ||w0||^2 - <w0, w>^2 / ||w||^2, which cancels in float32).
      c = jnp.maximum(jnp.sum(w * w0, 0), 0) / jnp.maximum(jnp.sum(w * w, 0), 1e-30)
      scale_free.append(jnp.linalg.norm(w0 - c * w))
    return {
      'raw': jnp.stack(raw),
      'scale_free': jnp.stack(scale_free),
      'init_norm': jnp.stack([jnp.linalg.norm(init[l][k]) for l, k in paths]),
    }

  return fn
