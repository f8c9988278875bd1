r"""Where a VGG train step spends its time: XLA's thunks ranked by time, from a profile.

  python benchmarks/profile_train_step.py [--model=vgg11] [--norm=batch] [--width=1.0]
      [--batch=128] [--steps=5] [--top=30]

Runs the jitted train step (BatchNorm unless ``--norm`` says otherwise) under
``jax.profiler`` and prints the thunks (fused kernels, convolutions, library calls) with
the most time per step. Names match the compiled HLO: dump it with
``XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`` to see what a fusion computes. XLA:CPU runs independent thunks concurrently, so rows can
overlap; most convolutions run through Eigen have no row of their own (jaxlib 0.10.2),
so the step minus the sum of the rows is mostly convolution time. This is how the
max-pool's select-and-scatter expansion (iotas, scatters, reduce-windows) was found, and
noisy BN's noise recomputed inside transposes (``--model=vgg16 --norm=noisy_batch
--width=0.25``).
"""

from bnjax import xla_flags

xla_flags.apply()  # as bnjax.main runs; before jax is imported

import argparse
import collections
import gzip
import json
import pathlib
import tempfile

import jax

from vgg_step import vgg_train_step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='vgg11')
  parser.add_argument('--norm', default='batch', help='a name in bnjax.models.NORMALIZERS')
  parser.add_argument('--width', type=float, default=1.0, help='VGG channel multiplier')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--top', type=int, default=30)
  args = parser.parse_args()
  _, state, step, batch = vgg_train_step(args.model, args.batch, args.norm, args.width)
  for _ in range(2):  # compile and warm up
    state, m = step(state, batch)
  jax.block_until_ready(m)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(args.steps):
      state, m = step(state, batch)
      jax.block_until_ready(m)
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(next(pathlib.Path(d).rglob('*.trace.json.gz'))))
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X':
      totals[e['name']] += e['dur'] / 1e3 / args.steps  # microseconds -> ms per step
  step_ms = max(t for name, t in totals.items() if 'block_until_ready' in name)
  print(f'{args.model} {args.norm} train step, width {args.width}, batch {args.batch}: '
        f'{step_ms:.1f} ms a step (wall time of block_until_ready); top thunks, ms a step:')
  thunks = [(n, t) for n, t in totals.items()
            if not n.startswith(('ThunkExecutor', '$'))]  # executor and Python frames
  for name, t in sorted(thunks, key=lambda nt: -nt[1])[:args.top]:
    print(f'{t:8.2f}  {name}')
  print(f'sum of all {len(thunks)} thunk rows: {sum(t for _, t in thunks):.1f} ms a step')


if __name__ == '__main__':
  main()
