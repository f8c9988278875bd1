r"""The paper's VGG set at paper scale, for accelerators (TPU VM slices, GPU clusters).

VGG-16 on CIFAR-10 (tfds), batch 128, plain SGD, 15,000 steps, exactly as PAPER.md states:
standard and BN at LR 0.1 and 0.5 (Fig. 1), noisy BN (Fig. 2), l1 / l2 / linf (Fig. 5),
BN and standard at LR 0.01 for ICS (Fig. 3's second rate). Probes as configs/vgg_*.py
(landscape, ICS of layers #5 and #10, activations every 100 steps), plus the top Hessian
eigenvalue in both BN modes every 500 steps on the standard and BN runs at LR 0.1.

  python -m bnjax.sweep configs/sweeps/paper_vgg.py --root=DIR          # one host
  launch/tpu_vm.sh NAME ZONE configs/sweeps/paper_vgg.py gs://BUCKET/runs  # a TPU VM slice
  launch/slurm.sh configs/sweeps/paper_vgg.py /shared/runs                 # a SLURM cluster
"""

from bnjax import config_lib, sweep


def get_sweep():
  c = config_lib.vgg('batch')
  c.probes.top_eigenvalues = {
    'every': 0,
    'k': 1,
    'num_iterations': 20,
    'seed': 0,
    'bn_mode': 'both',
  }
  runs = [
    {'name': 'bn_lr0.1', 'norm': 'batch', 'probes.top_eigenvalues.every': 500},
    {'name': 'standard_lr0.1', 'norm': 'none', 'probes.top_eigenvalues.every': 500},
    {'name': 'noisy_bn_lr0.1', 'norm': 'noisy_batch'},
    {'name': 'standard_lr0.5', 'norm': 'none', 'learning_rate': 0.5},
    {'name': 'bn_lr0.5', 'norm': 'batch', 'learning_rate': 0.5},
  ]
  runs += [{'name': f'{n}_lr0.1', 'norm': n} for n in ('lp1', 'lp2', 'lpinf')]
  runs += [
    {'name': f'{name}_lr0.01', 'norm': n, 'learning_rate': 0.01}
    for name, n in (('bn', 'batch'), ('standard', 'none'))
  ]
  return c, runs


get_config = sweep.config_getter(get_sweep)
