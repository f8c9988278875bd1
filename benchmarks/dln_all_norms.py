r"""The deep linear network at paper scale for all five normalisers, probes every step.

  python benchmarks/dln_all_norms.py [--steps=10000] [--probe_every=1]

Runs configs/dln_{standard,bn,l1,l2,linf}.py one after another in temporary workdirs
(landscape, ICS and activation probes every ``--probe_every`` steps), and prints each
run's wall time (compile included) and the total. Goal (issue 5): all five, 10,000
steps, probes every step, in under 5 minutes on a 2-core CPU.
"""

from bnjax import xla_flags

xla_flags.apply('dln')  # as bnjax.main runs a DLN config; before jax is imported

import argparse
import logging
import tempfile
import time

from bnjax import experiments, train

NORMS = {'standard': 'none', 'bn': 'batch', 'l1': 'lp1', 'l2': 'lp2', 'linf': 'lpinf'}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10_000)
  parser.add_argument('--probe_every', type=int, default=1)
  parser.add_argument('--steps_per_call', type=int, default=100)
  args = parser.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  total = 0.0
  for name, norm in NORMS.items():
    config = experiments.dln(norm)
    config.num_steps = args.steps
    config.checkpoint_every = 0
    config.steps_per_call = args.steps_per_call
    for probe in config.probes.values():
      probe.every = args.probe_every
    with tempfile.TemporaryDirectory() as workdir:
      t = time.perf_counter()
      state = train.train_and_evaluate(config, workdir)
      seconds = time.perf_counter() - t
    total += seconds
    print(
      f'dln_{name:8s} {args.steps} steps, probes every {args.probe_every}: {seconds:6.1f} s '
      f'({args.steps / seconds:.0f} steps/s, {state})',
      flush=True,
    )
  print(f'total {total:.1f} s  (goal: < 300 s for 10,000 steps, probes every step)')


if __name__ == '__main__':
  main()
