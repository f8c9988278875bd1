"""The XLA flags bnjax's entry points run with: the one place they are chosen.

``apply(model)`` must run before jax starts its backend, which reads XLA_FLAGS once:
``bnjax.main`` calls it with the config's model before its first jax call, the benchmarks
before they import jax. A library import (``bnjax.probes`` in your project) never changes
your flags. A flag already in XLA_FLAGS is left as set there.
"""

import os

_YNN = '--xla_cpu_experimental_ynn_fusion_type'

# jaxlib 0.10.2's XLA:CPU routes several kinds of operation, convolutions and reductions
# among them, to YNNPACK by default. Measured here, interleaved, with the benchmarks named:
# - '-individual_convolution' hands convolutions back to Eigen: the BN train step at batch
#   128 13-14% faster for VGG-11 and 18-22% for VGG-16, its forward pass 10-15%, a
#   VGG-11 HVP 8% (benchmarks/train_step_vs_torch.py, probes_vgg.py).
CPU_FLAGS = {_YNN: '-individual_convolution'}

# Per model, over CPU_FLAGS. The DLN also keeps reductions in XLA's own loops ('-reduce'):
# YNNPACK takes any reduction of 4,096 elements or more, and its per-call cost dominates
# the DLN's [1000, 10] batch statistics; the BN step went from 1.27-1.45 to 1.08-1.15 ms
# (none: 0.66-0.76 ms; benchmarks/dln_step.py). The VGGs keep YNNPACK's reductions: with
# '-reduce' their train-mode forward pass was 7-10% slower in three interleaved rounds.
MODEL_CPU_FLAGS = {'dln': {_YNN: '-individual_convolution,-reduce'}}


def flags_for(model: str | None = None) -> dict[str, str]:
  """The flags bnjax sets for ``model`` (a name in ``bnjax.models.MODELS``, or None)."""
  return {**CPU_FLAGS, **MODEL_CPU_FLAGS.get(model, {})}


def apply(model: str | None = None) -> None:
  """Adds ``flags_for(model)`` to the XLA_FLAGS environment variable (unless set there)."""
  current = os.environ.get('XLA_FLAGS', '')
  for flag, value in flags_for(model).items():
    if flag + '=' not in current:
      current = f'{current} {flag}={value}'.strip()
  os.environ['XLA_FLAGS'] = current
