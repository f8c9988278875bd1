"""The XLA flags bnjax's entry points run with: the one place they are chosen.

``apply()`` must run before jax initialises its backend; ``bnjax.main`` and the
benchmarks call it before importing jax. A library import (``bnjax.probes`` in your
project) never changes your flags. A flag already in XLA_FLAGS is left as set there.
"""

import os

# jaxlib 0.10.2's XLA:CPU routes several kinds of operation, convolutions and reductions
# among them, to YNNPACK by default. Measured here (interleaved runs of the benchmarks named):
# - '-individual_convolution' hands convolutions back to Eigen: the BN train step at batch
#   128 13-14% faster for VGG-11 and 18-22% for VGG-16, its forward pass 10-15%, a
#   VGG-11 HVP 8% (benchmarks/train_step_vs_torch.py, probes_vgg.py).
# - '-reduce' keeps reductions in XLA's own loops: YNNPACK's per-call cost dominates the
#   DLN's [1000, 10] batch statistics, whose BN step went from 1.27-1.45 to 1.08-1.15 ms
#   (none: 0.66-0.76 ms; benchmarks/dln_step.py); the VGG steps measured the same within
#   their noise, and VGG-11's compiled HVP peak memory fell from 714 to 572 MiB.
# Other backends ignore XLA:CPU flags.
CPU_FLAGS = {'--xla_cpu_experimental_ynn_fusion_type': '-individual_convolution,-reduce'}


def apply() -> None:
  """Adds CPU_FLAGS to the XLA_FLAGS environment variable (unless already set there)."""
  current = os.environ.get('XLA_FLAGS', '')
  for flag, value in CPU_FLAGS.items():
    if flag + '=' not in current:
      current = f'{current} {flag}={value}'.strip()
  os.environ['XLA_FLAGS'] = current
