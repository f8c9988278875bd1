"""Scheduled probes against independent answers: whole-block ICS, BN mode, BN theorems,
weight distance.

(Their config checks are in test_config.py.)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bnjax import experiments, models, objective, scheduled_probes, train
from bnjax.models import norms

LR = 0.5


SEED = jnp.int32(0)  # the run's seed, an argument of the probes as of the train program


def mlp_setup(probe_configs: dict, norm: str = 'batch'):
  """A two-layer MLP with a normaliser, one SGD step's state, and the probes asked for."""
  config = experiments.vgg(norm)
  config.model = 'mlp'
  config.learning_rate = LR
  config.probes = ml_collections.ConfigDict(probe_configs)
  model = models.get_model('mlp', norm, hidden=(6, 5), num_classes=3)
  rng = np.random.default_rng(0)
  batch = {
    'inputs': jnp.asarray(rng.standard_normal((16, 4)), jnp.float32),
    'targets': jnp.asarray(rng.integers(0, 3, 16)),
  }
  v = model.init(
    {'params': jax.random.key(0), 'noise': jax.random.key(0)}, batch['inputs'], train=False
  )
  # Move BN's scale and offset off 1 and 0 so that every parameter matters.
  params = jax.tree.map(
    lambda a: a + 0.3 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), v['params']
  )
  stats = jax.tree.map(
    lambda a: a + 0.5 * jnp.abs(jnp.asarray(rng.standard_normal(a.shape), a.dtype)),
    v.get('batch_stats', {}),
  )
  tx = optax.sgd(LR)
  state = train.TrainState.create({'params': params, 'batch_stats': stats}, tx)
  fns = scheduled_probes.build(config, model, tx)
  objective_fn = objective.make_objective(model, config.loss)
  key = jax.random.key(3)
  (loss, _), grads = jax.value_and_grad(objective_fn, has_aux=True)(params, stats, batch, key)
  return fns, state, batch, key, loss, grads


def hand_written_loss(p, x, y, dy=None):
  """The same two-layer BN MLP written out in plain jax.numpy (independent of Flax).

  dy: {k: [batch, units]} added to layer k's BN input."""
  eps = norms.BatchNorm.epsilon
  h = x
  for k in (1, 2):
    h = h @ p[f'dense{k}']['kernel'] + p[f'dense{k}']['bias'] + (dy or {}).get(k, 0.0)
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + eps) * p[f'norm{k}']['scale'] + p[f'norm{k}']['bias']
    h = jax.nn.relu(h)
  logits = h @ p['head']['kernel'] + p['head']['bias']
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_ics_moves_whole_blocks_below_the_layer():
  """Definition 2.1 with W_<2 = dense1's kernel and bias and norm1's scale and offset."""
  fns, state, batch, key, loss, grads = mlp_setup(
    {'ics': {'every': 1, 'layers': (1, 2), 'shift': 'block'}}
  )
  kernel_fns, *_ = mlp_setup({'ics': {'every': 1, 'layers': (1, 2), 'shift': 'kernel'}})
  block = jax.jit(fns['ics'].fn)(state, batch, key, loss, grads, SEED)
  kernel = jax.jit(kernel_fns['ics'].fn)(state, batch, key, loss, grads, SEED)

  p = state.params
  x, y = batch['inputs'], batch['targets']
  g = jax.grad(hand_written_loss)(p, x, y)
  new = jax.tree.map(lambda a, b: a - LR * b, p, g)
  w2_grad = lambda q: jax.grad(hand_written_loss)(q, x, y)['dense2']['kernel']
  shifted_block = dict(p, dense1=new['dense1'], norm1=new['norm1'])
  shifted_kernel = dict(p, dense1={'kernel': new['dense1']['kernel'], 'bias': p['dense1']['bias']})
  g2 = np.asarray(w2_grad(p), np.float64)

  def l2_cos(other):
    other = np.asarray(other, np.float64)
    return (
      np.linalg.norm(g2 - other),
      np.sum(g2 * other) / np.linalg.norm(g2) / np.linalg.norm(other),
    )

  for result, shifted in ((block, shifted_block), (kernel, shifted_kernel)):
    l2, cos = l2_cos(w2_grad(shifted))
    np.testing.assert_allclose(result['l2'], [0.0, l2], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(result['cosine'], [1.0, cos], rtol=1e-5)
  # The two definitions differ here: kernels-only misses the shift from BN and biases.
  assert abs(block['l2'][1] - kernel['l2'][1]) > 0.05 * block['l2'][1]


def dense_top_eigenvalue(loss_fn, params) -> float:
  flat, unravel = ravel_pytree(params)
  h = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat)
  return float(np.linalg.eigvalsh(np.asarray(h, np.float64))[-1])


def test_hessian_probes_in_train_and_eval_bn_mode():
  fns, state, batch, key, loss, grads = mlp_setup(
    {'top_eigenvalues': {'every': 1, 'k': 1, 'num_iterations': 40, 'seed': 0, 'bn_mode': 'both'}}
  )
  out = jax.jit(fns['top_eigenvalues'].fn)(state, batch, key, loss, grads, SEED)
  model = models.get_model('mlp', 'batch', hidden=(6, 5), num_classes=3)
  x, y = batch['inputs'], batch['targets']
  ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  eval_loss = lambda p: ce(
    model.apply({'params': p, 'batch_stats': state.batch_stats}, x, train=False)
  )
  train_loss = lambda p: hand_written_loss(p, x, y)
  lam_train = dense_top_eigenvalue(train_loss, state.params)
  lam_eval = dense_top_eigenvalue(eval_loss, state.params)
  assert abs(lam_train - lam_eval) > 0.05 * abs(lam_train)  # the modes are different losses
  np.testing.assert_allclose(out['eigenvalues'], [lam_train], rtol=1e-3)
  np.testing.assert_allclose(out['eval_eigenvalues'], [lam_eval], rtol=1e-3)


def test_bn_theorems_gradients_are_those_of_the_hand_written_network():
  fns, state, batch, key, loss, grads = mlp_setup(
    {'bn_theorems': {'every': 1, 'layers': (1, 2), 'units': 4}}
  )
  out = jax.jit(fns['bn_theorems'].fn)(state, batch, key, loss, grads, SEED)
  for k, width in ((1, 6), (2, 5)):
    dy = jnp.zeros((16, width))
    g = jax.grad(
      lambda d, k=k: hand_written_loss(state.params, batch['inputs'], batch['targets'], {k: d})
    )(dy)
    grad_y_sq = np.sum(np.asarray(g, np.float64) ** 2, 0)[:4]  # the first 4 units
    np.testing.assert_allclose(out[f'layer{k}/grad_y_sq'], grad_y_sq, rtol=1e-4)
    np.testing.assert_allclose(out[f'layer{k}/thm41_rhs'], grad_y_sq, rtol=1e-3)  # Thm 4.1: =
    lhs, rhs = (np.asarray(out[f'layer{k}/{f}'], np.float64) for f in ('curvature_y', 'thm42_rhs'))
    assert np.all(lhs <= rhs + 1e-4 * np.abs(lhs).max())  # Thm 4.2: <=


def test_weight_distance_is_zero_for_a_rescaled_unit_only_without_scale():
  fns, state, batch, key, loss, grads = mlp_setup({'weight_distance': {'every': 1}})
  model = models.get_model('mlp', 'batch', hidden=(6, 5), num_classes=3)
  seed = 7  # the run's seed, as the train program gives it (the config says 0)
  init = objective.init_variables(model, seed, batch['inputs'][:1])['params']
  assert init['dense1']['kernel'].shape == (4, 6)
  scales = np.linspace(0.5, 2.0, 6)
  params = dict(
    state.params, dense1=dict(state.params['dense1'], kernel=init['dense1']['kernel'] * scales)
  )
  params['dense2'] = dict(params['dense2'], kernel=init['dense2']['kernel'] + 1.0)
  out = jax.jit(fns['weight_distance'].fn)(
    state.replace(params=params), batch, key, loss, grads, jnp.int32(seed)
  )
  w0 = np.asarray(init['dense1']['kernel'], np.float64)
  np.testing.assert_allclose(out['raw'][0], np.linalg.norm(w0 * scales - w0), rtol=1e-5)
  np.testing.assert_allclose(out['scale_free'][0], 0.0, atol=1e-5)
  np.testing.assert_allclose(out['raw'][1], np.sqrt(6 * 5), rtol=1e-5)  # +1 everywhere
  assert out['scale_free'][1] > 0.1
  np.testing.assert_allclose(out['init_norm'][0], np.linalg.norm(w0), rtol=1e-6)


def test_a_probe_runs_at_its_listed_steps():
  fns, state, batch, key, loss, grads = mlp_setup(
    {'landscape': {'every': 0, 'steps': (2,), 'step_size_multipliers': (1.0,)}}
  )
  probe = fns['landscape']
  assert [s for s in range(5) if probe.due(s)] == [2]
  assert [s for s in range(5) if bool(probe.due_traced(jnp.int32(s)))] == [2]
  model = models.get_model('mlp', 'batch', hidden=(6, 5), num_classes=3)
  seed = jnp.int32(1)
  step = train.make_train_step(objective.make_objective(model, 'cross_entropy'), optax.sgd(LR), LR)
  batches = jax.tree.map(lambda b: jnp.stack([b] * 4), batch)
  _, (_, out) = jax.jit(train.make_train_chunk(step, fns, seed))(state, batches)
  ran = np.isfinite(np.asarray(out['landscape']['loss_at_start']))
  assert ran.tolist() == [False, False, True, False]


def test_the_probes_of_a_train_step_trace_each_loss_once(monkeypatch):
  """Every scheduled probe at once: the model is traced once per function differentiated
  (the step's objective, the probes' objective at their precision, the activations, BN's
  perturbed loss, the eval-mode loss), not once per probe, step size, layer or HVP."""
  fns, state, batch, _, _, _ = mlp_setup(
    {
      'landscape': {'every': 1, 'step_size_multipliers': (0.5, 1.0, 2.0)},
      'ics': {'every': 1, 'layers': (1, 2)},
      'activations': {'every': 1, 'layers': (1, 2), 'seed': 0},
      'top_eigenvalues': {'every': 1, 'k': 1, 'num_iterations': 4, 'seed': 0, 'bn_mode': 'both'},
      'spectral_density': {'every': 1, 'num_probes': 2, 'num_iterations': 4, 'seed': 0},
      'hessian_trace': {'every': 1, 'num_samples': 2, 'seed': 0, 'bn_mode': 'both'},
      'bn_theorems': {'every': 1, 'layers': (1, 2), 'units': 2},
    }
  )
  model = models.get_model('mlp', 'batch', hidden=(6, 5), num_classes=3)
  step = train.make_train_step(objective.make_objective(model, 'cross_entropy'), optax.sgd(LR), LR)
  batches = jax.tree.map(lambda b: jnp.stack([b] * 2), batch)
  traced = []
  apply = nn.Module.apply
  monkeypatch.setattr(nn.Module, 'apply', lambda *a, **k: traced.append(1) or apply(*a, **k))
  jax.jit(train.make_train_chunk(step, fns, SEED)).trace(state, batches)
  assert len(traced) == 5
