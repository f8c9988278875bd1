r"""The 25-layer 10x10 deep linear network with l_inf normalisation after layers 1..24.

Full-batch gradient descent on 1,000 Gaussian samples, LR 1e-6, 10,000 steps; probes
every 100 steps. Runs offline (synthetic data).

Run:
  python -m bnjax.main --config=configs/dln_linf.py --workdir=runs/dln_linf
"""

from bnjax import experiments


def get_config(arg=None):
  return experiments.dln(norm='lpinf', arg=arg)
