"""Every figure renders from tiny synthetic workdirs, with the panels it should have."""

import json
import pathlib

import numpy as np
import pytest

from bnjax import config_lib, plots
from bnjax.plots import measures

T = 60  # steps per synthetic run
PROBE_EVERY = 10


def write_run(root: pathlib.Path, family: str, norm: str, lr: float, diverge_at=None, seed=0):
  """A workdir as bnjax.train writes it: config.json, metrics.jsonl, status.json."""
  rng = np.random.default_rng(abs(hash((family, norm, lr, seed))) % 2**32)
  c = config_lib.vgg(norm) if family == 'vgg' else config_lib.dln(norm)
  c.learning_rate = lr
  c.seed = seed
  layers = tuple(c.probes.activations.layers)
  num_layers = 13 if family == 'vgg' else 25
  path = root / (f'{family}_{norm}_{lr:g}' + (f'_seed{seed}' if seed else ''))
  path.mkdir(parents=True)
  (path / 'config.json').write_text(c.to_json())
  lines = []
  for t in range(T):
    loss = 2.0 * np.exp(-t / 30) + 0.1 * rng.random()
    if diverge_at is not None and t >= diverge_at:
      loss = float('nan')
    line = {'step': t, 'train_loss': loss, 'learning_rate': lr}
    if family == 'vgg':
      line['train_accuracy'] = min(1.0, t / T + 0.1 * rng.random())
      if t % 20 == 0:
        line.update(eval_accuracy=t / T, eval_loss=loss)
        if norm in ('noisy_batch', 'noise'):
          line.update(eval_accuracy_expected_noise=t / T / 2)
    if t % PROBE_EVERY == 0:
      etas = [lr * m for m in c.probes.landscape.step_size_multipliers]
      line.update(
        {
          'probe/landscape/loss': list(loss * (1 + rng.random(len(etas)))),
          'probe/landscape/grad_diff': list(rng.random(len(etas)) + 0.1),
          'probe/landscape/beta': 2 / lr * (1 + rng.random()),
          'probe/landscape/step_sizes': etas,
          'probe/ics/l2': list(rng.random(2) + 0.01),
          'probe/ics/cosine': list(rng.random(2)),
          'probe/ics/grad_norm': list(rng.random(2) + 1),
          'probe/landscape/loss_at_start': loss,
        }
      )
      for k in layers:
        values = rng.standard_normal(200) * (1 + t / T)
        hist, edges = np.histogram(values, 40)
        line.update(
          {
            f'probe/activations/layer{k}/hist': hist.tolist(),
            f'probe/activations/layer{k}/edges': edges.tolist(),
            f'probe/activations/layer{k}/mean': values.mean(),
            f'probe/activations/layer{k}/var': values.var(),
          }
        )
      line.update(
        {
          'probe/weight_distance/raw': list(rng.random(num_layers) * t),
          'probe/weight_distance/scale_free': list(rng.random(num_layers) * t / 2),
          'probe/weight_distance/init_norm': list(1 + rng.random(num_layers)),
        }
      )
      if norm in ('none', 'batch'):
        line.update(
          {
            'probe/top_eigenvalues/eigenvalues': [1 / lr * rng.random()],
            'probe/top_eigenvalues/eval_eigenvalues': [1 / lr * rng.random()],
          }
        )
      if norm == 'batch':
        for k in (3, 11):
          lhs = rng.random(4)
          line.update(
            {
              f'probe/bn_theorems/layer{k}/grad_y_sq': list(lhs),
              f'probe/bn_theorems/layer{k}/thm41_rhs': list(lhs * (1 + 1e-6)),
              f'probe/bn_theorems/layer{k}/curvature_y': list(rng.random(4)),
              f'probe/bn_theorems/layer{k}/thm42_rhs': list(1 + rng.random(4)),
            }
          )
    if t in (0, T - 1) and norm in ('none', 'batch'):
      line.update(
        {
          'probe/spectral_density/nodes': rng.standard_normal((2, 5)).tolist(),
          'probe/spectral_density/weights': (np.ones((2, 5)) / 10).tolist(),
        }
      )
    lines.append(line)
    if diverge_at is not None and t >= diverge_at:
      break
  (path / 'metrics.jsonl').write_text(
    ''.join(json.dumps(l).replace('NaN', 'NaN') + '\n' for l in lines)
  )
  state = {'state': 'diverged', 'step': diverge_at} if diverge_at else {'state': 'done', 'step': T}
  (path / 'status.json').write_text(json.dumps(state))
  return path


def write_analysis(path: pathlib.Path, dims: int) -> None:
  """analysis/*.jsonl as python -m bnjax.analyze writes them: a loss surface (1-D or 2-D),
  top eigenvalues and adaptive sharpness at three checkpoint steps."""
  rng = np.random.default_rng(dims)
  grid = [list(np.linspace(-1, 1, 5))] * dims
  files = {
    'loss_surface': [],
    'top_eigenvalues': [],
    'adaptive_sharpness': [],
    'layer_top_eigenvalues': [],
  }
  for step in (0, T // 2, T):
    files['loss_surface'].append(
      {
        'step': step,
        'loss': (1 + rng.random((5,) * dims)).tolist(),
        'grid': grid,
        'center_loss': 1.0,
        'settings': {'probe': 'loss_surface', 'directions': ['random']},
      }
    )
    files['top_eigenvalues'].append(
      {'step': step, 'eigenvalues': [10 + rng.random()], 'settings': {'probe': 'top_eigenvalues'}}
    )
    files['adaptive_sharpness'].append(
      {'step': step, 'sharpness': 1 + rng.random(), 'settings': {'probe': 'adaptive_sharpness'}}
    )
    blocks = {f'{kind}{k}': [1 + rng.random()] for kind in ('dense', 'norm') for k in (1, 2, 3)}
    files['layer_top_eigenvalues'].append(
      {'step': step, 'eigenvalues': blocks, 'settings': {'probe': 'top_eigenvalues'}}
    )
  (path / 'analysis').mkdir()
  for name, lines in files.items():
    (path / 'analysis' / f'{name}.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))


@pytest.fixture(scope='module')
def sweep_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('sweep')
  for norm in ('none', 'batch', 'noisy_batch', 'noise', 'lp1', 'lp2', 'lpinf', 'layer'):
    write_run(root, 'vgg', norm, 0.1)
  for norm in ('none', 'batch'):  # a second seed of each: one configuration, two runs
    write_run(root, 'vgg', norm, 0.1, seed=1)
    write_run(root, 'dln', norm, 1e-6, seed=1)
  write_run(root, 'vgg', 'none', 0.5, diverge_at=25)
  write_run(root, 'vgg', 'batch', 0.5)
  for norm in ('none', 'batch'):
    write_run(root, 'vgg', norm, 0.01)
    write_run(root, 'dln', norm, 1e-7)
  for norm in ('none', 'batch', 'lp1', 'lp2', 'lpinf', 'layer'):
    write_run(root, 'dln', norm, 1e-6)
  for name, dims in (('vgg_none_0.1', 2), ('vgg_batch_0.1', 2), ('dln_batch_1e-06', 1)):
    write_analysis(root / name, dims)
  return root


# Titled panels each figure must have with the synthetic sweep above.
EXPECTED_PANELS = {
  'fig1': 2 + 4,  # train, test accuracy; layers #3, #11 for standard and BN
  'fig2': 2 + 3 * 3,  # training, test accuracy; standard, BN, noisy x layers #2, #9, #13
  'fig3': 5 * 5,  # VGG 0.5, 0.1, 0.01 and DLN 1e-6, 1e-7 rows x (training + 2 l2 + 2 cos)
  'fig4': 3 * 3,
  'fig10': 2 * 3,  # every LR x (loss band, gradient predictiveness, beta)
  'fig5': 2,  # VGG accuracy, DLN loss
  'fig6': 5,  # layer #11 for the five
  'fig8': 3 * 4,  # layers #2, #9, #13 x (|dmu|, |ds2|, mu - mu0, s2 - s20)
  'fig9': 5 * 3,  # the five x layers 1, 11, 24
  'fig11': 2 * 5,  # standard and BN at VGG 0.5, 0.1, 0.01 and DLN 1e-6, 1e-7
  'fig12': 5 * 3,
  'fig13': 5 * 3,  # the five x three landscape panels
  'sharpness': 5,
  'density': 4,
  'theorems': 2,
  'weights': 5,  # per model and LR; density: standard, BN
  'layernorm': 2 * 4,
  'eos': 4,  # beta x LR/2, sharpness x LR/2, relative ICS at two layers
  'matched': 3 * 2,  # VGG 0.1, DLN 1e-6, 1e-7 x (gradient predictiveness, beta)
  'surface': 3 + 3 + 1,  # two 2-D surfaces at three steps, a 1-D surface's curves
  'analysis': 2 * 3,  # VGG, DLN x (eigenvalue, adaptive sharpness, one against the other)
  'layers': 3,  # a panel per run analysed
}


def test_plots_all_from_a_root_draws_every_figure_with_its_panels(
  sweep_root, tmp_path, monkeypatch
):
  from bnjax.plots.__main__ import main

  # Each figure is drawn once (most of this test's time): `all` draws them through
  # plots.draw, whose panel titles are recorded on the way.
  titles, draw = {}, plots.draw
  monkeypatch.setattr(plots, 'draw', lambda name, *a: titles.setdefault(name, draw(name, *a)))
  assert set(EXPECTED_PANELS) == set(plots.FIGURES)
  assert main(['all', '--root', str(sweep_root), '--out', str(tmp_path / 'all')]) == 0
  for name, expected in EXPECTED_PANELS.items():
    data = (tmp_path / 'all' / f'{name}.png').read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000, name
    assert len(titles[name]) == expected, (name, titles[name])
  workdirs = [str(sweep_root / n) for n in ('vgg_none_0.1', 'vgg_batch_0.1')]
  assert main(['fig4', '--workdirs', *workdirs, '--out', str(tmp_path / 'f4.png')]) == 0
  assert (tmp_path / 'f4.png').stat().st_size > 10_000
  assert main(['numbers', '--root', str(sweep_root), '--out', str(tmp_path / 'n.md')]) == 0
  table = (tmp_path / 'n.md').read_text()
  assert '| vgg_none_0.5 | Standard, LR 0.5 (1 seed, 1 diverged) | 1 | 1 diverged | 25 |' in table
  assert '| vgg_none_0.1 | Standard, LR 0.1 (2 seeds) | 2 | 2 done | 60 |' in table
  # A figure whose runs are absent says so instead of drawing an empty frame.
  assert main(['fig9', '--workdirs', *workdirs, '--out', str(tmp_path / 'f9.png')]) == 1
  assert not (tmp_path / 'f9.png').exists()


def test_an_x_marks_a_diverged_seeds_end_and_not_a_run_still_going(tmp_path):
  from bnjax.plots import panels, runs as runs_lib
  import matplotlib.pyplot as plt

  going = write_run(tmp_path, 'vgg', 'none', 0.5, diverge_at=None, seed=1)
  write_run(tmp_path, 'vgg', 'none', 0.5, diverge_at=25, seed=2)
  write_run(tmp_path, 'vgg', 'none', 0.5, seed=3)
  lines = (going / 'metrics.jsonl').read_text().splitlines()
  (going / 'metrics.jsonl').write_text('\n'.join(lines[:30]) + '\n')  # stopped at step 30
  (going / 'status.json').write_text(json.dumps({'state': 'preempted', 'step': 30}))
  [group] = runs_lib.group_runs(plots.find_runs(tmp_path))
  assert [r.diverged for r in group.runs] == [False, True, False]
  _, ax = plt.subplots()
  panels.seed_curve(ax, group, 'train_loss')
  xs = [l for l in ax.lines if l.get_marker() == 'x']
  assert len(xs) == 1 and xs[0].get_xdata()[0] == 24  # the diverged seed's last finite step
  plt.close('all')


def test_labels_come_from_the_config_and_divergence_is_marked(sweep_root):
  run = plots.load_run(sweep_root / 'vgg_none_0.5')
  assert run.label() == 'Standard, LR 0.5 (diverged)'
  assert plots.load_run(sweep_root / 'dln_lp1_1e-06').label() == r'Standard + $\ell_1$, LR 1e-06'


def test_seeds_of_one_configuration_are_one_group_with_their_spread(sweep_root):
  groups = plots.group_runs(plots.find_runs(sweep_root))
  by_name = {(g.family, g.norm, g.lr): g for g in groups}
  pair = by_name[('vgg', 'none', 0.1)]
  assert pair.seeds == [0, 1] and pair.label() == 'Standard, LR 0.1 (2 seeds)'
  steps, values = pair.stack('probe/landscape/beta')
  assert values.shape == (2, len(steps))
  for run, row in zip(pair.runs, values):  # each seed's own series, in seed order
    np.testing.assert_array_equal(row, run.series('probe/landscape/beta')[1])
  spread = measures.over_seeds(pair, lambda r: measures.landscape_median(r, 'beta'))
  medians = [np.median(r.series('probe/landscape/beta')[1]) for r in pair.runs]
  assert (spread.mean, spread.lo, spread.hi, spread.n) == pytest.approx(
    (np.mean(medians), min(medians), max(medians), 2)
  )
  assert spread.text() == f'{np.mean(medians):.3g} [{min(medians):.3g}, {max(medians):.3g}]'
  # A seed that diverged early: NaN after its last step, not a shorter array.
  diverged = plots.group_runs([plots.load_run(sweep_root / 'vgg_none_0.5')])[0]
  steps, loss = diverged.stack('train_loss')
  assert steps[-1] == 25 and np.isnan(loss[0, -1])


def test_matched_loss_takes_the_first_probed_step_at_or_below_the_target(tmp_path):
  path = write_run(tmp_path, 'dln', 'batch', 1e-6)
  run = plots.load_run(path)
  stats = measures.landscape_row_stats(run)
  target = float(np.sort(stats['loss'])[len(stats['loss']) // 2])
  i = int(np.nonzero(stats['loss'] <= target)[0][0])
  assert measures.at_matched_loss(run, target, 'step') == stats['step'][i]
  assert measures.at_matched_loss(run, target, 'beta') == stats['beta'][i]
  assert np.isnan(measures.at_matched_loss(run, -1.0, 'beta'))  # never reached
