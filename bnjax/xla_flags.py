"""The XLA flags bnjax's entry points run with: the one place they are chosen.

``apply(model)`` must run before jax starts its backend, which reads XLA_FLAGS once:
``bnjax.main`` calls it with the config's model before its first jax call, the benchmarks
before they import jax. A library import (``bnjax.probes`` in your project) never changes
your flags. A flag already in XLA_FLAGS is left as set there.
"""

import os

# jaxlib 0.10.2's XLA:CPU routes several kinds of operation, convolutions and reductions
# among them, to YNNPACK by default; bnjax turns some off ('-<type>' in the flag's list).
# Measured here, interleaved, with the benchmarks named:
# - 'individual_convolution', for every model, hands convolutions back to Eigen: the BN
#   train step at batch 128 13-14% faster for VGG-11 and 18-22% for VGG-16, its forward
#   pass 10-15%, a VGG-11 HVP 8% (benchmarks/train_step_vs_torch.py, probes_vgg.py).
# - 'reduce', for the DLN only, keeps reductions in XLA's own loops: YNNPACK takes any
#   reduction of 4,096 elements or more, and its per-call cost dominates the DLN's
#   [1000, 10] batch statistics; the BN step went from 1.27-1.45 to 1.08-1.15 ms (none:
#   0.66-0.76 ms; benchmarks/dln_step.py). The VGGs keep YNNPACK's reductions: with them
#   off their train-mode forward pass was 7-10% slower in three interleaved rounds.
# - 'individual_dot', for the DLN only, keeps its matmuls in XLA's own code: YNNPACK's
#   per-call cost outweighs a [1000, 10] x [10, 10] product. Every DLN step got about
#   0.6 ms faster: none 0.98 -> 0.40 ms, BN 1.60-1.61 -> 1.02-1.03 ms, the other
#   normalisers alike (benchmarks/dln_step.py, two rounds each way); also at width 100
#   (BN 16.0 -> 11.7 ms) and 400 (104.9 -> 100.1 ms). The train chunk with every probe then
#   has no YNNPACK fusion and loads from the compilation cache in 0.57 s, not 0.65 s
#   (benchmarks/cache_read.py --config=configs/dln_bn.py).
# Other backends ignore XLA:CPU flags.
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_OFF = ('individual_convolution',)
YNN_OFF_FOR_MODEL = {'dln': ('reduce', 'individual_dot')}


def flags_for(model: str | None = None) -> dict[str, str]:
  """The flags bnjax sets for ``model`` (a name in ``bnjax.models.MODELS``, or None)."""
  off = YNN_OFF + YNN_OFF_FOR_MODEL.get(model, ())
  return {YNN_FLAG: ','.join(f'-{fusion_type}' for fusion_type in off)}


def apply(model: str | None = None) -> None:
  """Adds ``flags_for(model)`` to the XLA_FLAGS environment variable (unless set there)."""
  current = os.environ.get('XLA_FLAGS', '')
  for flag, value in flags_for(model).items():
    if flag + '=' not in current:
      current = f'{current} {flag}={value}'.strip()
  os.environ['XLA_FLAGS'] = current
