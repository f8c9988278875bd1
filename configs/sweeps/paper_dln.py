r"""The paper's deep-linear-network set, at paper scale (it fits a CPU), at 5 seeds: 40 runs.

The 25-layer 10x10 DLN, full-batch gradient descent on 1,000 Gaussian samples, 10,000
steps each: standard, BN, l1, l2, linf at LR 1e-6 (Figs. 5, 9, 10, 11, 13), LayerNorm at
1e-6 (beyond the paper), and standard and BN at LR 1e-7 for ICS (Fig. 3's second rate).
Probes (a stated schedule, not every step): landscape and ICS (layers #9, #17) every
10 steps; activations of layers 1, 11, 24 every 500; the top Hessian eigenvalue (BN in
train and eval mode) every 100; the spectral density at the first and last step; weight
distance from the initialisation every 500; Theorems 4.1 / 4.2 (BN runs) every 500.
Each at seeds 0-4 (initialisation, data and targets change with the seed), ordered seed
by seed; every checkpoint is kept (every 100 steps, 10 KB each) for ``bnjax.analyze``.
See dln_lr.py for standard and BN at three more learning rates (edge of stability).

  python -m bnjax.sweep configs/sweeps/paper_dln.py --root=$HOME/bnjax-runs/paper_dln --parallel=2
"""

from bnjax import config_lib, sweep

NUM_STEPS = 10_000
SEEDS = (0, 1, 2, 3, 4)


def base_config():
  """The DLN config with this set's probe schedule and checkpoints (shared by dln_lr.py)."""
  c = config_lib.dln('batch')
  c.num_steps = NUM_STEPS
  c.checkpoint_every = 100
  c.max_checkpoints_to_keep = NUM_STEPS // 100 + 1  # every one, for bnjax.analyze
  c.probes.landscape.every = 10
  c.probes.ics.every = 10
  c.probes.activations.every = 500
  c.probes.top_eigenvalues = {
    'every': 100,
    'k': 1,
    'num_iterations': 20,
    'seed': 0,
    'bn_mode': 'both',
  }
  c.probes.spectral_density = {
    'every': 0,
    'steps': (0, NUM_STEPS - 1),
    'num_probes': 4,
    'num_iterations': 40,
    'seed': 0,
    'bn_mode': 'train',
  }
  c.probes.weight_distance = {'every': 500}
  c.probes.bn_theorems = {'every': 0, 'layers': (1, 11, 24), 'units': 4}
  return c


def with_theorems(run: dict) -> dict:
  """Theorems 4.1 / 4.2 every 500 steps on BN runs."""
  return {**run, 'probes.bn_theorems.every': 500} if run['norm'] == 'batch' else run


def get_sweep():
  c = base_config()
  norms = {
    'standard': 'none',
    'bn': 'batch',
    'l1': 'lp1',
    'l2': 'lp2',
    'linf': 'lpinf',
    'layernorm': 'layer',
  }
  runs = [{'name': f'{name}_lr1e-6', 'norm': norm} for name, norm in norms.items()]
  runs += [
    {'name': f'{name}_lr1e-7', 'norm': norms[name], 'learning_rate': 1e-7}
    for name in ('standard', 'bn')
  ]
  return c, [
    with_theorems({**r, 'name': f'{r["name"]}_seed{seed}', 'seed': seed})
    for seed in SEEDS
    for r in runs
  ]


get_config = sweep.config_getter(get_sweep)
