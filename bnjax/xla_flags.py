"""The XLA flags bnjax's entry points run with: the one place they are chosen.

``apply()`` must run before jax initialises its backend; ``bnjax.main`` and the
benchmarks call it before importing jax. A library import (``bnjax.probes`` in your
project) never changes your flags. A flag already in XLA_FLAGS is left as set there.
"""

import os

# jaxlib 0.10.2's XLA:CPU runs convolutions through YNNPACK by default. Handing them back
# to Eigen ('-individual_convolution') made the BN train step at batch 128 13-14% faster
# for VGG-11 and 18-22% for VGG-16, and its forward pass 10-15% faster, in two
# interleaved rounds (benchmarks/train_step_vs_torch.py); a VGG-11 HVP 8%. It does not
# touch the DLN (no convolutions). Other backends ignore XLA:CPU flags.
CPU_FLAGS = {'--xla_cpu_experimental_ynn_fusion_type': '-individual_convolution'}


def apply() -> None:
  """Adds CPU_FLAGS to the XLA_FLAGS environment variable (unless already set there)."""
  current = os.environ.get('XLA_FLAGS', '')
  for flag, value in CPU_FLAGS.items():
    if flag + '=' not in current:
      current = f'{current} {flag}={value}'.strip()
  os.environ['XLA_FLAGS'] = current
