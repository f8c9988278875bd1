r"""An example grid: learning rate x seed for standard and BN VGG (:local scale), 12 runs.

Shows how a sweep is built: ``product`` of ``axis``es, as big_vision's ``get_hyper``.
Run names come from the overrides, e.g. ``norm=batch_learning_rate=0.5_seed=1``.

  python -m bnjax.sweep configs/sweeps/lr_seed_grid.py --root=DIR \
      --config.dataset=imagefolder:../shared/data/cifar10-jpeg.tar.gz
"""

from bnjax import config_lib, sweep


def get_sweep():
  c = config_lib.vgg('batch', 'local')
  return c, sweep.product(
    sweep.axis('norm', ['none', 'batch']),
    sweep.axis('learning_rate', [0.05, 0.1, 0.5]),
    sweep.axis('seed', [0, 1]),
  )


get_config = sweep.config_getter(get_sweep)
