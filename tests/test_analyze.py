"""python -m bnjax.analyze on a tiny trained DLN: results against the probes called directly
on the trainer's own checkpoints, resuming, sweep roots, uncommitted checkpoints, figures,
bad input."""

import json
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import jax.flatten_util
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from bnjax import checkpoints, data, interruptions, models, objective, plots, probes, train
from bnjax.analyze import layout, run, table
from bnjax.plots import measures, numbers
from bnjax.analyze.__main__ import main
from small_runs import (
  ROOT,
  has_checkpoint,
  main_args,
  metric_lines,
  small_dln,
  start,
  status,
  steps_in,
  subprocess_env,
  wait_for,
)

STEPS = [0, 10, 20, 30, 40]  # step 0 (rebuilt) and the committed checkpoints


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> pathlib.Path:
  """A 4-layer BN DLN trained 40 steps, checkpoints every 10, all kept; no probes."""
  config = small_dln(max_checkpoints_to_keep=10)
  for p in config.probes.values():
    p.every = 0
  workdir = tmp_path_factory.mktemp('runs') / 'dln_bn'
  assert train.train_and_evaluate(config, str(workdir)) == 'done'
  return workdir


@pytest.fixture
def workdir(trained, tmp_path) -> pathlib.Path:
  """A copy of the trained run that a test may analyse (and damage)."""
  return pathlib.Path(shutil.copytree(trained, tmp_path / trained.name))


def _analyze(workdir, probe, **fields):
  return run.analyze_workdir(
    workdir, run.Request(probe, fields.pop('name', probe), **fields), echo=lambda _: None
  )


def _lines(workdir, name):
  return layout.read_lines(layout.output(workdir, name))


def _trainer_state(workdir, step):
  """(config, model, params, batch_stats) at ``step`` as the trainer has them: its own
  TrainState restored through orbax's manager, or its initialisation at step 0."""
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  dataset = data.load(config.dataset, seed=config.seed)
  model = models.from_config(config, dataset.num_classes)
  sample = jax.numpy.zeros((1,) + dataset.train.inputs.shape[1:])
  tx = optax.sgd(config.learning_rate)
  init = lambda: train.TrainState.create(objective.init_variables(model, config.seed, sample), tx)
  if step == 0:
    state = init()
  else:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), jax.eval_shape(init)
    )
    with checkpoints.manager(workdir, None) as mgr:
      state = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
  return config, dataset, model, state


def _direct_loss(workdir, step, num_batches, bn_mode='train'):
  """(loss_fn(params), params): the mean over batches 0..N-1 of the run's loss, a Python
  loop over batches (no dataset_loss), BN in ``bn_mode``."""
  config, dataset, model, state = _trainer_state(workdir, step)
  b = data.local_train_batches(dataset.train, config.batch_size, config.seed, 0, num_batches)
  objective_fn = objective.make_objective(model, config.loss)

  def one(params, i):
    batch = {'inputs': b['inputs'][i], 'targets': b['targets'][i]}
    if bn_mode == 'train':
      return objective_fn(params, state.batch_stats, batch, jax.random.key(0))[0]
    out = model.apply(
      {'params': params, 'batch_stats': state.batch_stats}, batch['inputs'], train=False
    )
    return objective.loss_value(config.loss, out, batch['targets'])

  return (
    lambda params: sum(one(params, i) for i in range(num_batches)) / num_batches,
    state.params,
  )


def test_top_eigenvalues_equal_the_probe_on_the_trainers_own_states(workdir):
  outcome = _analyze(
    workdir,
    'top_eigenvalues',
    items=(('k', '2'), ('num_iterations', '12')),
    steps=('0', '20'),
    num_batches=2,
  )
  assert outcome.computed == [0, 20]
  for line in _lines(workdir, 'top_eigenvalues'):
    loss_fn, params = _direct_loss(workdir, line['step'], 2)
    expected = probes.top_eigenvalues(loss_fn, params, jax.random.key(0), k=2, num_iterations=12)
    np.testing.assert_allclose(line['eigenvalues'], expected.eigenvalues, rtol=1e-3)
    assert line['settings']['args'] == {'k': 2, 'num_iterations': 12}


def test_operator_ef_is_the_empirical_fisher_of_the_examples_analysed(workdir):
  _analyze(
    workdir,
    'top_eigenvalues',
    steps=('20',),
    num_batches=2,
    items=(('k', '2'), ('num_iterations', '60'), ('operator', 'ef')),
  )
  [line] = _lines(workdir, 'top_eigenvalues')
  # Dense: per-example gradients of l_n = ||f_n - y_n||^2 / K (the DLN's summed squared
  # error, K = 2 batches averaged), each batch through BN with its own statistics.
  config, dataset, model, state = _trainer_state(workdir, 20)
  b = data.local_train_batches(dataset.train, config.batch_size, config.seed, 0, 2)
  flat, unravel = jax.flatten_util.ravel_pytree(state.params)

  def example_losses(vector, i):  # [B]
    out, _ = model.apply(
      {'params': unravel(vector), 'batch_stats': state.batch_stats},
      b['inputs'][i],
      train=True,
      mutable=['batch_stats'],
    )
    return jax.numpy.sum(jax.numpy.square(out - b['targets'][i]), axis=-1) / 2

  per_example = np.concatenate([jax.jacrev(example_losses)(flat, i) for i in range(2)])
  per_example = per_example.astype(np.float64)  # [N, P]
  expected = np.linalg.eigvalsh(per_example.T @ per_example)[::-1][:2]
  np.testing.assert_allclose(line['eigenvalues'], expected, rtol=1e-3)
  assert line['settings']['args']['operator'] == 'ef'


@pytest.mark.parametrize('bn_mode', ['train', 'eval'])
def test_the_loss_analysed_is_the_runs_loss_in_either_bn_mode(workdir, bn_mode):
  _analyze(workdir, 'loss_surface', grids=((-0.5, 0.5, 3),), num_batches=2, bn_mode=bn_mode)
  lines = _lines(workdir, 'loss_surface')
  assert [l['step'] for l in lines] == STEPS
  for line in lines:
    loss_fn, params = _direct_loss(workdir, line['step'], 2, bn_mode)
    np.testing.assert_allclose(line['center_loss'], loss_fn(params), rtol=1e-5)
    np.testing.assert_allclose(line['loss'][1], line['center_loss'], rtol=1e-6)  # a = 0


def test_step_0_and_checkpoints_match_the_training_losses_the_trainer_recorded(workdir):
  # The DLN's batch is the whole data set, so every step's batch gives batch 0's loss.
  _analyze(workdir, 'loss_surface', grids=((0.0, 0.0, 1),))
  recorded = {l['step']: l['train_loss'] for l in metric_lines(workdir) if 'train_loss' in l}
  for line in _lines(workdir, 'loss_surface'):
    if line['step'] in recorded:
      np.testing.assert_allclose(line['center_loss'], recorded[line['step']], rtol=1e-5)


def _files(workdir):
  return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in workdir.rglob('*') if p.is_file()}


def test_a_line_per_committed_step_and_a_second_run_writes_nothing(workdir):
  before = _files(workdir)
  assert _analyze(workdir, 'hessian_trace', items=(('num_samples', '4'),)).computed == STEPS
  after = _files(workdir)
  written = {p.relative_to(workdir) for p in after if before.get(p) != after[p]}
  assert written == {
    pathlib.Path('analysis/hessian_trace.jsonl'),
    pathlib.Path('analysis/hessian_trace.png'),
  }  # nothing else, no lock
  assert [l['step'] for l in _lines(workdir, 'hessian_trace')] == STEPS
  again = _analyze(workdir, 'hessian_trace', items=(('num_samples', '4'),))
  assert again.computed == [] and again.skipped == len(STEPS)
  assert _files(workdir) == after


def test_other_settings_are_refused_and_go_to_a_file_of_their_own(workdir):
  _analyze(workdir, 'top_eigenvalues', steps=('0',), items=(('num_iterations', '5'),))
  with pytest.raises(table.AnalysisError, match=r'args\.k.*--name'):
    _analyze(workdir, 'top_eigenvalues', steps=('0',), items=(('k', '2'), ('num_iterations', '5')))
  _analyze(
    workdir,
    'top_eigenvalues',
    name='top2',
    steps=('0',),
    items=(('k', '2'), ('num_iterations', '5')),
  )
  assert len(_lines(workdir, 'top2')[0]['eigenvalues']) == 2


def test_an_uncommitted_checkpoint_is_ignored(workdir):
  ckpts = workdir / 'checkpoints'
  shutil.copytree(ckpts / '40', ckpts / '50')
  (ckpts / '50' / checkpoints.COMMIT_MARKER).unlink()  # a save still in progress
  outcome = _analyze(workdir, 'hessian_trace', items=(('num_samples', '2'),))
  assert outcome.computed == STEPS
  listed = _analyze(workdir, 'hessian_trace', items=(('num_samples', '2'),), steps=('40', '50'))
  assert listed.computed == [] and listed.missing == [50]


def test_layout_names_are_the_checkpoints(tmp_path):
  assert (layout.CHECKPOINTS, layout.COMMIT_MARKER) == (
    checkpoints.DIRECTORY,
    checkpoints.COMMIT_MARKER,
  )


def test_probe_arguments_are_read_as_the_probe_declares_them():
  config = {'learning_rate': 0.1, 'probes': {'landscape': {'step_size_multipliers': [1, 2]}}}
  assert table.probe_kwargs(
    'adaptive_sharpness',
    [
      ('rho', '0.05'),
      ('kind', 'average'),
      ('p', 'inf'),
      ('ignore', 'bias,norm'),
      ('random-init', 'true'),
    ],
    config,
  ) == {
    'rho': 0.05,
    'kind': 'average',
    'p': float('inf'),
    'ignore': ('bias', 'norm'),
    'random_init': True,
  }
  assert table.probe_kwargs(
    'top_eigenvalues', [('k', '3'), ('num_iterations', 'None')], config
  ) == {'k': 3, 'num_iterations': None}
  assert table.probe_kwargs('gradient_landscape', [], config) == {'step_sizes': (0.1, 0.2)}


BAD_INPUT = [
  (['--probe=top_eigenvalue'], 'unknown probe'),
  (['--probe=top_eigenvalues', '--kk=3'], "no argument 'kk'"),
  (['--probe=top_eigenvalues', '--arg', 'k=1.5'], 'must be an integer'),
  (['--probe=adaptive_sharpness'], 'needs --rho=VALUE'),
  (['--probe=adaptive_sharpness', '--rho=1', '--kind=best'], 'must be one of'),
  (['--probe=loss_surface', '--grid=1:-1:5'], 'LO:HI:N'),
  (['--probe=loss_surface', '--directions=sideways'], 'unknown direction'),
  (['--probe=loss_surface', '--directions=gradient', '--grid2=-1:1:3'], '2-D grid'),
  (['--probe=hessian_trace', '--steps=first'], '--steps'),
  (['--probe=hessian_trace', '--bn-mode=test'], 'invalid choice'),
  (['--probe=hessian_trace', '--name=../out'], 'a file stem'),
  (['--probe=hessian_trace', '--grid=-1:1:3'], 'for --probe=loss_surface only'),
  (['--probe=top_eigenvalues', '--operator=fisher'], 'use --operator=ef or ggn'),
]


@pytest.mark.parametrize('args,message', BAD_INPUT)
def test_bad_input_is_one_line(trained, capsys, args, message):
  assert main([str(trained), *args]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('bnjax.analyze: ') and message in err, err
  assert not (trained / layout.DIRECTORY).exists()


def test_a_path_that_is_no_workdir_is_one_line(tmp_path, capsys):
  assert main([str(tmp_path), '--probe=hessian_trace']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'no workdir with checkpoints/' in err


def test_the_surface_figure_has_a_panel_per_run_and_step(trained, tmp_path):
  two_d = pathlib.Path(shutil.copytree(trained, tmp_path / 'two_d'))
  one_d = pathlib.Path(shutil.copytree(trained, tmp_path / 'one_d'))
  _analyze(two_d, 'loss_surface', grids=((-1.0, 1.0, 4), (-1.0, 1.0, 3)), steps=('0', '20', 'last'))
  _analyze(one_d, 'loss_surface', directions='gradient', grids=((-1.0, 1.0, 5),))
  assert np.shape(_lines(two_d, 'loss_surface')[0]['loss']) == (4, 3)
  out = tmp_path / 'surface.png'
  titles = plots.draw('surface', [plots.load_run(two_d), plots.load_run(one_d)], out)
  assert titles == [
    'two_d: step 0',
    'two_d: step 20',
    'two_d: step 40',
    'one_d: loss along one direction',
  ]
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (two_d / 'analysis' / 'loss_surface.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_layers_figure_and_table_give_each_weight_layers_block(workdir, tmp_path):
  _analyze(
    workdir,
    'top_eigenvalues',
    name=measures.LAYERS,
    steps=('0', 'last'),
    items=(('blocks', 'layers'), ('num_iterations', '12')),
  )
  lines = _lines(workdir, measures.LAYERS)
  blocks = lines[0]['eigenvalues']
  assert sorted(blocks) == ['dense1', 'dense2', 'dense3', 'dense4', 'norm1', 'norm2', 'norm3']
  layers, values = measures.weight_layers(blocks)
  assert layers == [1, 2, 3, 4] and values == [blocks[f'dense{k}'][0] for k in layers]
  out = tmp_path / 'layers.png'
  assert plots.draw('layers', [plots.load_run(workdir)], out) == [workdir.name]
  table = numbers.analyses([plots.load_run(workdir)])
  top = int(np.argmax(values))
  assert (
    f'0: {measures.fmt(min(values), 4)} - {measures.fmt(values[top], 4)} (#{top + 1})' in table[-2]
  )


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'bnjax.analyze', *map(str, args)],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=900,
  )


@pytest.mark.slow
def test_a_sweep_root_analyses_each_workdir_and_a_rerun_skips_them(trained, tmp_path):
  root = tmp_path / 'sweep'
  for name in ('a', 'b'):
    shutil.copytree(trained, root / name)
  (root / 'logs').mkdir()  # not a workdir: passed over
  args = (root, '--probe=adaptive_sharpness', '--rho=0.05', '--num-steps=3', '--steps=0,last')
  first = _cli(*args)
  assert first.returncode == 0, first.stderr[-2000:]
  for name in ('a', 'b'):
    lines = _lines(root / name, 'adaptive_sharpness')
    assert [l['step'] for l in lines] == [0, 40] and len(lines[0]['values']) == 4
    assert (root / name / 'analysis' / 'adaptive_sharpness.png').exists()
  assert first.stdout.count('step 40 (2/2)') == 2
  assert '2 workdir(s): 4 step(s) computed, 0 already done' in first.stdout
  second = _cli(*args)
  assert second.returncode == 0 and '0 step(s) computed, 4 already done' in second.stdout
  plotted = subprocess.run(
    [sys.executable, '-m', 'bnjax.plots', 'analysis', '--root', root, '--out', tmp_path / 'a.png'],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert plotted.returncode == 0 and (tmp_path / 'a.png').stat().st_size > 10_000


@pytest.mark.slow
def test_a_listed_step_without_a_checkpoint_is_reported_and_fails_the_exit_status(workdir):
  result = _cli(workdir, '--probe=hessian_trace', '--num_samples=2', '--steps=0,15')
  assert result.returncode == 1
  assert 'step 15: no committed checkpoint' in result.stdout
  assert [l['step'] for l in _lines(workdir, 'hessian_trace')] == [0]


def test_json_of_results_keeps_dicts_and_lists():
  fields = run.to_json(
    {'a': np.float32(1.5), 'b': (np.arange(2), np.ones(1)), 'c': {'dense1/kernel': np.float32(2)}}
  )
  assert json.loads(json.dumps(fields)) == {
    'a': 1.5,
    'b': [[0, 1], [1.0]],
    'c': {'dense1/kernel': 2.0},
  }


@pytest.mark.slow
def test_beside_a_running_training_only_committed_steps_are_read_and_training_goes_on(tmp_path):
  workdir = tmp_path / 'live'
  # Open-ended (this DLN trains 2,000 steps in seconds, the analysis can take longer):
  # the training runs until the analysis has ended, then checkpoints on SIGTERM.
  training = start(main_args(workdir, num_steps=10**6, max_checkpoints_to_keep=3))
  try:
    wait_for(has_checkpoint(workdir), training)
    beside = _cli(workdir, '--probe=hessian_trace', '--num_samples=2')
    assert training.poll() is None, 'the training ended before the analysis did'
  finally:
    training.send_signal(signal.SIGTERM)
  ended = training.wait(timeout=300)
  assert ended == interruptions.EXIT_PREEMPTED, training.communicate()[1][-2000:]
  # Exit 1 only when the training deleted a listed checkpoint before it was read.
  assert beside.returncode in (0, 1), beside.stderr[-2000:]
  assert beside.returncode == 0 or 'deleted' in beside.stdout
  steps = [l['step'] for l in _lines(workdir, 'hessian_trace')]
  assert steps[0] == 0 and all(s % 100 == 0 for s in steps)
  state = status(workdir)
  assert state['state'] == 'preempted' and steps_in(workdir) == list(range(state['step']))
  after = _cli(workdir, '--probe=hessian_trace', '--num_samples=2')
  assert after.returncode == 0, after.stderr[-2000:]
  done = {l['step'] for l in _lines(workdir, 'hessian_trace')}
  assert {0, *layout.committed_steps(workdir)} <= done
