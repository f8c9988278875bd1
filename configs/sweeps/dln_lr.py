r"""Standard and BN DLNs at three more learning rates, 3 seeds: is BN's smoothness the edge of stability?

Gradient descent drives the sharpness towards 2/LR and holds it there (Cohen et al. 2021),
so a network's effective beta at one learning rate may say more about the rate than about
BN. With paper_dln.py's standard and BN runs at LR 1e-7 and 1e-6 (seeds 0-2 of those),
these give LR {1e-8, 3e-8, 1e-7, 3e-7, 1e-6} x {standard, BN} x seeds {0, 1, 2}, with
paper_dln.py's probe schedule and checkpoints: 18 runs here.

  python -m bnjax.sweep configs/sweeps/dln_lr.py --root=$HOME/bnjax-runs/dln_lr --parallel=2
"""

import importlib.util
import pathlib

from bnjax import sweep

SEEDS = (0, 1, 2)
LEARNING_RATES = (1e-8, 3e-8, 3e-7)


def _paper_dln():
  path = pathlib.Path(__file__).with_name('paper_dln.py')
  spec = importlib.util.spec_from_file_location('_paper_dln', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_sweep():
  paper_dln = _paper_dln()
  runs = [
    paper_dln.with_theorems(
      {'name': f'{name}_lr{lr:g}_seed{seed}', 'norm': norm, 'learning_rate': lr, 'seed': seed}
    )
    for seed in SEEDS
    for lr in LEARNING_RATES
    for name, norm in (('standard', 'none'), ('bn', 'batch'))
  ]
  return paper_dln.base_config(), runs


get_config = sweep.config_getter(get_sweep)
