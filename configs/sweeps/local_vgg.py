r"""The reproduction's VGG set at reduced scale, for a CPU, at 3 seeds: 36 runs.

VGG-16's 13 conv layers (so the paper's layer numbers hold) at a quarter of the width,
batch 128 and the paper's learning rates, 2,000 steps (about 5 epochs, against the
paper's 15,000), on the local CIFAR-10 (JPEG). Runs, first the ones most figures need:
  BN and standard at LR 0.1 and 0.5 (Fig. 1), noisy BN (Fig. 2), l1 / l2 / linf (Fig. 5),
  BN and standard at LR 0.01 (Fig. 3's second rate), the same noise without BN (the
  paper's control), LayerNorm (beyond the paper).
Each at seeds 0, 1, 2 (a seed changes the initialisation, the data order and the noise);
runs are ordered seed by seed, so a sweep cut short still has every configuration once.
Every checkpoint is kept (every 100 steps, about 4 MB each) for ``bnjax.analyze``.
Probes: landscape and ICS (layers #5, #10) every 50 steps; activations of layers
#2, 3, 9, 11, 13 every 100; weight distance every 250; for BN and standard at LR 0.1 also
the top Hessian eigenvalue in both BN modes every 250 steps, the spectral density at the
first and last step, and (BN) Theorems 4.1 / 4.2 every 250 steps.

Run from the repository root (the dataset path is relative to it):
  python -m bnjax.sweep configs/sweeps/local_vgg.py --root=$HOME/bnjax-runs/local_vgg
"""

from bnjax import config_lib, sweep

NUM_STEPS = 2000
PROBE_EVERY = 50
SEEDS = (0, 1, 2)


def get_sweep():
  c = config_lib.vgg('batch')
  c.model = 'vgg16'
  c.model_kwargs.width = 0.25
  c.dataset = 'imagefolder:../shared/data/cifar10-jpeg.tar.gz'
  c.num_steps = NUM_STEPS
  c.eval_every = 250
  c.checkpoint_every = 100
  c.max_checkpoints_to_keep = NUM_STEPS // 100 + 1  # every one, for bnjax.analyze
  c.eval_batch_size = 1024
  c.probes.landscape.every = PROBE_EVERY
  c.probes.ics.every = PROBE_EVERY
  c.probes.activations.every = 100
  c.probes.weight_distance = {'every': 250}
  # Present in every run so that every run's config has the same fields; enabled below.
  c.probes.top_eigenvalues = {
    'every': 0,
    'k': 1,
    'num_iterations': 16,
    'seed': 0,
    'bn_mode': 'both',
  }
  c.probes.spectral_density = {
    'every': 0,
    'steps': (),
    'num_probes': 2,
    'num_iterations': 30,
    'seed': 0,
    'bn_mode': 'train',
  }
  c.probes.bn_theorems = {'every': 0, 'layers': (3, 11), 'units': 4}

  curvature = {
    'probes.top_eigenvalues.every': 250,
    'probes.spectral_density.steps': (0, NUM_STEPS - 1),
  }
  runs = [
    {'name': 'bn_lr0.1', 'norm': 'batch', **curvature, 'probes.bn_theorems.every': 250},
    {'name': 'standard_lr0.1', 'norm': 'none', **curvature},
    {'name': 'noisy_bn_lr0.1', 'norm': 'noisy_batch'},
    {'name': 'standard_lr0.5', 'norm': 'none', 'learning_rate': 0.5},
    {'name': 'bn_lr0.5', 'norm': 'batch', 'learning_rate': 0.5},
  ]
  runs += [{'name': f'{n}_lr0.1', 'norm': n} for n in ('lp1', 'lp2', 'lpinf')]
  runs += [
    {'name': f'{name}_lr0.01', 'norm': n, 'learning_rate': 0.01}
    for name, n in (('bn', 'batch'), ('standard', 'none'))
  ]
  runs += [{'name': 'noise_lr0.1', 'norm': 'noise'}, {'name': 'layer_lr0.1', 'norm': 'layer'}]
  return c, [{**r, 'name': f'{r["name"]}_seed{seed}', 'seed': seed} for seed in SEEDS for r in runs]


get_config = sweep.config_getter(get_sweep)
