r"""Where a VGG train step spends its time: XLA's thunks ranked by time, from a profile,
and with ``--torch`` the same split for PyTorch eager beside it.

  python benchmarks/profile_train_step.py [--model=vgg11] [--norm=batch] [--width=1.0]
      [--batch=128] [--steps=5] [--top=30] [--torch]

Runs the jitted train step (BatchNorm unless ``--norm`` says otherwise) under
``jax.profiler`` and prints the thunks (fused kernels, convolutions, library calls) with
the most time per step, each with the JAX operation it came from. Names match the
compiled HLO: dump it with ``XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`` to see
what a fusion computes. XLA:CPU runs independent thunks concurrently, so rows can
overlap; most convolutions run through Eigen have no row of their own (jaxlib 0.10.2),
so the step minus the other rows is mostly convolution time. This is how the max-pool's
select-and-scatter expansion (iotas, scatters, reduce-windows) was found, and noisy BN's
noise recomputed inside transposes (``--model=vgg16 --norm=noisy_batch --width=0.25``).

``--torch`` (BatchNorm, width 1 only; ``pip install -e ".[torch]"``) profiles the same
VGG in PyTorch eager with ``torch.profiler`` and prints both steps split into
convolutions (forward and backward; for bnjax also the im2col matmuls of the 2x2 layers)
and everything else.
"""

from bnjax import xla_flags

xla_flags.apply()  # as bnjax.main runs; before jax is imported

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile

import jax

from vgg_step import torch_vgg_train_step, vgg_train_step

# JAX operations whose thunks count as convolutions: XLA's own and the im2col matmuls (the
# head's small matmul, a dot_general too, is counted with them).
CONV_OPS = ('conv_general_dilated', 'dot_general')


def source_ops(compiled_text: str) -> dict[str, str]:
  """HLO instruction name -> the JAX operation it came from (its op_name metadata)."""
  return dict(re.findall(r'%([\w.\-]+) = .*?op_name="([^"]*)"', compiled_text))


def jax_profile(step, state, batch, steps: int) -> tuple[float, dict[str, float]]:
  """(ms a step, {thunk name: ms a step}) of ``steps`` calls of ``step`` under jax.profiler."""
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(steps):
      state, m = step(state, batch)
      jax.block_until_ready(m)
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(next(pathlib.Path(d).rglob('*.trace.json.gz'))))
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X':
      totals[e['name']] += e['dur'] / 1e3 / steps  # microseconds -> ms per step
  step_ms = max(t for name, t in totals.items() if 'block_until_ready' in name)
  thunks = {
    n: t
    for n, t in totals.items()  # not the executor, runtime or Python frames
    if not n.startswith(('ThunkExecutor', '$')) and '::' not in n and '(' not in n
  }
  return step_ms, thunks


def torch_profile(step, steps: int) -> tuple[float, dict[str, float]]:
  """(ms a step, {aten op: self CPU ms a step}) of ``steps`` PyTorch steps."""
  import torch  # pylint: disable=g-import-not-at-top

  for _ in range(2):
    step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  ops = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
  return sum(ops.values()), ops


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='vgg11')
  parser.add_argument('--norm', default='batch', help='a name in bnjax.models.NORMALIZERS')
  parser.add_argument('--width', type=float, default=1.0, help='VGG channel multiplier')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--top', type=int, default=30)
  parser.add_argument(
    '--torch',
    action='store_true',
    help='also profile the same VGG in PyTorch eager (BatchNorm, width 1)',
  )
  args = parser.parse_args()
  if args.torch and (args.norm != 'batch' or args.width != 1.0):
    parser.error('--torch compares the BatchNorm VGG at width 1 only')
  torch_step = torch_vgg_train_step(args.model, args.batch) if args.torch else None
  if args.torch and torch_step is None:
    parser.error('--torch needs PyTorch: pip install -e ".[torch]"')
  _, state, step, batch = vgg_train_step(args.model, args.batch, args.norm, args.width)
  step = step.lower(state, batch).compile()  # compiled once: profiled and read for its ops
  ops = source_ops(step.as_text())
  for _ in range(2):  # warm up
    state, m = step(state, batch)
  jax.block_until_ready(m)
  step_ms, thunks = jax_profile(step, state, batch, args.steps)
  print(
    f'{args.model} {args.norm} train step, width {args.width}, batch {args.batch}: '
    f'{step_ms:.1f} ms a step (wall time of block_until_ready); top thunks, ms a step:'
  )
  for name, t in sorted(thunks.items(), key=lambda nt: -nt[1])[: args.top]:
    print(f'{t:8.2f}  {name:32s} {ops.get(name, "(added by XLA: a layout change or copy)")}')
  print(f'sum of all {len(thunks)} thunk rows: {sum(thunks.values()):.1f} ms a step')
  if torch_step is None:
    return
  torch_ms, torch_ops = torch_profile(torch_step[0], args.steps)
  other = sum(t for n, t in thunks.items() if not ops.get(n, '').endswith(CONV_OPS))
  torch_conv = sum(t for n, t in torch_ops.items() if 'convolution' in n)
  print('\nside by side, ms a step          bnjax    torch')
  print(f'step                          {step_ms:8.1f} {torch_ms:8.1f}')
  print(
    f'convolutions (fwd + bwd)      {step_ms - other:8.1f} {torch_conv:8.1f}'
    '   (bnjax: the step minus the other rows)'
  )
  print(f'everything else               {other:8.1f} {torch_ms - torch_conv:8.1f}')
  added = sum(t for n, t in thunks.items() if n not in ops)
  print(f'{"  of it XLA layouts, copies":30s}{added:8.1f}')
  print('torch ops, self CPU ms a step:')
  for name, t in sorted(torch_ops.items(), key=lambda nt: -nt[1])[:10]:
    print(f'{t:8.2f}  {name}')


if __name__ == '__main__':
  main()
