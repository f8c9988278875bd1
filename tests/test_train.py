"""The trainer: the step and the scan chunk, end to end, data parallelism over devices and
processes, probes leave training alone, bad input."""

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bnjax import config_lib, data, models, objective, probes, scheduled_probes, train

# ROOT and subprocess_env: other test files import them from here.
from small_runs import ROOT, metric_lines, start_main, subprocess_env


def tiny_vgg_config(**overrides):
  c = config_lib.vgg('noisy_batch')
  c.model = 'vgg_tiny'
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_steps = 4
  c.eval_every = 2
  c.checkpoint_every = 2
  for p in c.probes.values():
    p.every = 2
  c.probes.ics.layers = (1, 2)
  c.probes.activations.layers = (1, 2)
  c.update(overrides)
  return c


def test_end_to_end_on_mock_cifar10_over_8_devices(tmp_path):
  config = tiny_vgg_config()
  with tfds.testing.mock_data(num_examples=64):
    assert train.train_and_evaluate(config, str(tmp_path)) == 'done'
  lines = metric_lines(tmp_path)
  train_lines = [l for l in lines if 'train_loss' in l]
  assert [l['step'] for l in train_lines] == [0, 1, 2, 3]
  for l in train_lines:
    assert {'train_loss', 'train_accuracy', 'learning_rate', 'steps_per_second'} <= set(l)
    assert np.isfinite(l['train_loss'])
  assert 'eval_accuracy' in train_lines[0] and 'eval_accuracy' in train_lines[2]
  assert lines[-1]['step'] == 4 and 'eval_loss' in lines[-1]
  probed = train_lines[0]
  assert len(probed['probe/landscape/loss']) == 4 and probed['probe/landscape/beta'] > 0
  assert probed['probe/ics/cosine'][0] == pytest.approx(1.0)  # layer 1 has no layer below
  assert sum(probed['probe/activations/layer2/hist']) == 16 * 16 * 16  # batch x H x W
  assert 'probe/landscape/loss' not in train_lines[1]
  status = json.loads((tmp_path / 'status.json').read_text())
  assert status['state'] == 'done' and status['step'] == 4
  assert json.loads((tmp_path / 'config.json').read_text())['model'] == 'vgg_tiny'
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == [
    '2',
    '4',
  ]


def _train_step_on(num_devices, norm, num_groups):
  """Two SGD steps of vgg_tiny on a mesh of ``num_devices``; returns (losses, params)."""
  mesh = jax.make_mesh(
    (num_devices,), ('data',), axis_types=(AxisType.Auto,), devices=jax.devices()[:num_devices]
  )
  model = models.get_model('vgg_tiny', norm, {'num_groups': num_groups})
  tx = optax.sgd(0.1)
  x = jax.random.normal(jax.random.key(0), (2, 16, 32, 32, 3))
  y = jax.random.randint(jax.random.key(1), (2, 16), 0, 10)
  v = model.init({'params': jax.random.key(2), 'noise': jax.random.key(2)}, x[0], train=False)
  state = train.TrainState.create(v, tx)
  step = train.make_train_step(objective.make_objective(model, 'cross_entropy'), tx, 0.1)
  repl = NamedSharding(mesh, P())
  fn = jax.jit(step, in_shardings=(repl, NamedSharding(mesh, P('data')), repl), out_shardings=repl)
  state = jax.device_put(state, repl)
  losses = []
  for i in range(2):
    key = objective.noise_key_for_step(jax.random.key(3), i)
    state, m = fn(state, {'inputs': x[i], 'targets': y[i]}, key)
    losses.append(m['train_loss'])
  return np.array(losses), state


@pytest.mark.parametrize('norm', ['batch', 'noisy_batch'])
def test_one_and_four_devices_agree_with_global_statistics(norm):
  loss1, s1 = _train_step_on(1, norm, 1)
  loss4, s4 = _train_step_on(4, norm, 1)
  np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    (s1.params, s1.batch_stats),
    (s4.params, s4.batch_stats),
  )


def test_per_device_statistics_equal_four_statistic_groups_on_one_device():
  loss1, s1 = _train_step_on(1, 'batch', 4)
  loss4, s4 = _train_step_on(4, 'batch', 4)
  lossg, _ = _train_step_on(4, 'batch', 1)
  np.testing.assert_allclose(loss1, loss4, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s4.params
  )
  assert not np.allclose(loss4, lossg, rtol=1e-5)  # per-device differs from global


def test_probes_do_not_change_training():
  config = config_lib.dln('noisy_batch')
  config.model_kwargs.depth = 6  # a short DLN: the property, not the scale, is tested
  config.probes.ics.layers = (2, 4)
  config.probes.activations.layers = (1, 3)
  config.probes.top_eigenvalues = dict(every=1, k=1, num_iterations=3, seed=0)
  config.probes.landscape.every = 1
  config.probes.ics.every = 2
  model = train.build_model(config, None)
  tx = optax.sgd(config.learning_rate)
  ds = data.dln_gaussian(0, 64)
  batches = {
    'inputs': jnp.stack([ds.train.inputs] * 4),
    'targets': jnp.stack([ds.train.targets] * 4),
  }
  v = model.init(
    {'params': jax.random.key(0), 'noise': jax.random.key(0)}, batches['inputs'][0], train=False
  )
  state = train.TrainState.create(v, tx)
  objective_fn = objective.make_objective(model, config.loss)
  seed = jnp.int32(1)
  step = train.make_train_step(objective_fn, tx, config.learning_rate)
  results = []
  for probe_fns in ({}, scheduled_probes.build(config, model, tx)):
    chunk = jax.jit(train.make_train_chunk(step, probe_fns, seed))
    results.append(chunk(state, batches))
  (plain, _), (probed, (_, probe_out)) = results
  assert set(probe_out) == {'landscape', 'ics', 'activations', 'top_eigenvalues'}
  assert np.isfinite(probe_out['top_eigenvalues']['eigenvalues']).all()
  # The landscape, fed the step's loss and gradient, equals the probe run on its own, up to
  # rounding: grad_diff is a difference of two gradients of norm grad_norm (here ~7e3, and
  # grad_diff ~1 at the smallest step), so it is compared to within 1e-6 grad_norm, about
  # ten float32 ulps of the gradients, computed by two differently compiled programs.
  key0 = objective.noise_key_for_step(objective.noise_base_key(seed), jnp.int32(0))
  batch0 = jax.tree.map(lambda b: b[0], batches)
  alone = jax.jit(
    lambda p, stats, b, k, etas: probes.gradient_landscape(
      lambda q: objective_fn(q, stats, b, k)[0], p, etas
    )
  )(state.params, state.batch_stats, batch0, key0, probe_out['landscape']['step_sizes'][0])
  trained = {k: np.asarray(a[0]) for k, a in probe_out['landscape'].items()}
  for field in ('loss', 'loss_at_start', 'grad_norm'):
    np.testing.assert_allclose(trained[field], getattr(alone, field), rtol=1e-4)
  np.testing.assert_allclose(
    trained['grad_diff'], alone.grad_diff, rtol=1e-4, atol=1e-6 * float(alone.grad_norm)
  )
  # beta inherits grad_diff's rounding divided by the smallest step: check its definition.
  np.testing.assert_allclose(
    trained['beta'],
    np.max(trained['grad_diff'] / (trained['step_sizes'] * trained['grad_norm'])),
    rtol=1e-5,
  )
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(probed)):
    np.testing.assert_array_equal(a, b)  # bit-identical


@pytest.mark.parametrize(
  'override,message',
  [
    ({'model': 'resnet'}, "unknown model 'resnet'"),
    ({'norm': 'group'}, "unknown normaliser 'group'"),
    ({'dataset': 'imagenet'}, "unknown dataset 'imagenet'"),
    ({'dataset': 'imagefolder:/nonexistent/cifar.tar.gz'}, 'does not exist'),
    ({'batch_size': 12}, 'not divisible by the 8 devices'),
    ({'learning_rate': -0.1}, 'learning_rate must be a finite number > 0'),
    ({'num_steps': -1}, 'num_steps must be an integer >= 0'),
  ],
)
def test_bad_config_fails_before_any_work(tmp_path, override, message):
  config = tiny_vgg_config(**override)
  workdir = tmp_path / 'run'
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    train.train_and_evaluate(config, str(workdir))
  assert '\n' not in str(e.value)
  assert not workdir.exists()


def test_probe_layers_are_checked_against_the_model(tmp_path):
  config = tiny_vgg_config()
  config.probes.ics.layers = (1, 5)
  with tfds.testing.mock_data(num_examples=32), pytest.raises(ValueError, match='layers 1..2'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_an_unreadable_image_is_named_before_training_or_skipped_and_counted(tmp_path):
  from PIL import Image

  root = tmp_path / 'imgs'
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('test', 3)):
    for c in ('cat', 'dog'):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
          root / split / c / f'{i}.jpg'
        )
  for bad in (root / 'train' / 'dog' / '3.jpg', root / 'test' / 'cat' / '1.jpg'):
    bad.write_bytes(bad.read_bytes()[:100])  # truncated, as a half-copied file is
  cache = tmp_path / 'cache'
  with pytest.raises(data.DataError) as e:
    data.load(f'imagefolder:{root}', cache_dir=str(cache))
  message = str(e.value)
  assert '\n' not in message and '1 other image(s) unreadable too' in message
  assert ('train/dog/3.jpg' in message) != ('test/cat/1.jpg' in message)  # names the first
  assert 'skip_unreadable_images' in message
  ds = data.load(f'imagefolder:{root}', cache_dir=str(cache), skip_unreadable_images=True)
  assert ds.skipped_images == 2
  assert len(ds.train.inputs) == 11 and len(ds.test.inputs) == 5
  assert not list(cache.glob('*.npz'))  # never cached from a partial decode

  config = config_lib.vgg('batch')
  config.update(
    model='vgg_tiny',
    batch_size=8,
    eval_batch_size=8,
    num_steps=2,
    eval_every=0,
    checkpoint_every=0,
    dataset=f'imagefolder:{root}',
  )
  for probe in config.probes.values():
    probe.every = 0
  config.data.cache_dir = str(cache)
  with pytest.raises(data.DataError, match='1 other image'):
    train.train_and_evaluate(config, str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused').exists()  # before any training
  config.data.skip_unreadable_images = True
  assert train.train_and_evaluate(config, str(tmp_path / 'run')) == 'done'
  lines = metric_lines(tmp_path / 'run')
  assert lines[0]['data/skipped_images'] == 2 and lines[0]['step'] == 0
  assert [l['step'] for l in lines] == [0, 1, 2]  # every step once (2: the final eval)


@pytest.mark.slow
def test_two_processes_train_exactly_as_one(tmp_path):
  """launch/local_multihost.sh: 2 JAX processes x 2 devices (jax.distributed on localhost),
  each loading its half of the batch, match 1 process x 4 devices step for step, also
  across a resume from the processes' shared checkpoint."""
  # The paper's DLN sweep config: every in-training probe, Hessian ones included.
  args = [
    f'--config={ROOT}/configs/sweeps/paper_dln.py:bn_lr1e-6_seed0',
    '--config.model_kwargs.depth=4',
    '--config.steps_per_call=10',
    '--config.checkpoint_every=10',
    '--config.probes.ics.layers=(2, 3)',
    '--config.probes.ics.every=10',
    '--config.probes.landscape.every=10',
    '--config.probes.activations.every=20',
    '--config.probes.activations.layers=(1, 3)',
    '--config.probes.bn_theorems.layers=(1, 3)',
    '--config.probes.bn_theorems.every=20',
    '--config.probes.top_eigenvalues.every=20',
    '--config.probes.spectral_density.steps=(30,)',
    '--config.probes.weight_distance.every=20',
  ]
  one = start_main([*args, '--config.num_steps=40'], tmp_path / 'one', devices=4)
  _, err = one.communicate(timeout=600)
  assert one.returncode == 0, err
  for num_steps in (30, 40):  # the second run resumes from step 30
    two = subprocess.run(
      [
        'bash',
        'launch/local_multihost.sh',
        '2',
        '2',
        *args,
        f'--config.num_steps={num_steps}',
        f'--workdir={tmp_path / "two"}',
      ],
      cwd=ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert 'JAX process 1/2' in two.stderr
  assert 'resumed from checkpoint at step 30' in two.stderr
  a, b = metric_lines(tmp_path / 'one'), metric_lines(tmp_path / 'two')
  assert [l['step'] for l in b] == list(range(40))  # written once, by process 0
  for la, lb in zip(a, b):
    np.testing.assert_allclose(lb['train_loss'], la['train_loss'], rtol=1e-5)
  probed = [k for l in a for k in l if k.startswith('probe/')]
  assert {k.split('/')[1] for k in probed} == {
    'landscape',
    'ics',
    'activations',
    'top_eigenvalues',
    'spectral_density',
    'bn_theorems',
    'weight_distance',
  }
  for la, lb in zip(a, b):
    for probe in {k.split('/')[1] for k in la if k.startswith('probe/')}:
      keys = [k for k in la if k.startswith(f'probe/{probe}/')]
      # Tolerances relative to the probe's largest value on the line: a BN output's mean
      # or a Lanczos residual is rounding-sized against it.
      scale = max(
        np.nanmax(np.abs(np.asarray(la[k], np.float64))) for k in keys if not k.endswith('/hist')
      )
      for k in keys:
        va, vb = np.asarray(la[k], np.float64), np.asarray(lb[k], np.float64)
        if k.endswith('/hist'):  # a value within rounding of a bin edge may change bins
          assert np.abs(va - vb).sum() <= 2, (k, la['step'])
          continue
        # ICS's l2 is the norm of a difference of two gradients, so the gradients'
        # rounding (different reduction orders on 1 x 4 and 2 x 2 devices) weighs more.
        rtol = 3e-4 if k == 'probe/ics/l2' else 1e-4
        np.testing.assert_allclose(
          vb, va, rtol=rtol, atol=1e-5 * scale, err_msg=f'{k} {la["step"]}'
        )
  status = json.loads((tmp_path / 'two' / 'status.json').read_text())
  assert status['state'] == 'done' and status['step'] == 40
  assert (tmp_path / 'two' / 'checkpoints' / '40').exists()
