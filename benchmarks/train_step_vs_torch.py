r"""bnjax's train step against PyTorch eager on the same VGG, batch and precision.

  pip install -e ".[torch]"
  python benchmarks/train_step_vs_torch.py [--models=vgg11,vgg16] [--batch=128] [--rounds=5] [--repeats=3]

Same architecture (3x3 conv + BatchNorm + ReLU, 2x2 max-pools, one linear head), Glorot
init, float32, plain SGD at LR 0.1, batch 128, CIFAR shapes; one process. The two sides
are interleaved: each round times bnjax's step, its forward pass, PyTorch's step and its
forward pass in turn, so that a slow spell of the machine lands on both sides. Prints the
median over rounds of each round's ratio (bnjax / PyTorch: < 1 is faster), with the
lowest and highest round, each side's median time, its rate in model GFLOP/s (3x the
forward convolutions' and head's multiply-adds x 2, whatever the implementation computes)
and, as the machine's ceiling, the rate of one 4096^3 float32 matmul in XLA. Without torch
installed it prints bnjax's figures alone.
"""

from bnjax import xla_flags

xla_flags.apply()  # as bnjax.main runs; before jax is imported

import argparse
import statistics

import jax

from bnjax.models import vgg
from timing import interleaved_times, median_time
from vgg_step import torch_vgg_train_step, vgg_train_step


def step_gflop(name: str, batch: int) -> float:
  """Model FLOPs of one train step, GFLOP: forward (3x3 SAME convs + head) x 3."""
  flops, hw, c = 0, 32, 3
  for entry in vgg.LAYOUTS[name]:
    if entry == 'M':
      hw //= 2
    else:
      flops += 2 * batch * hw * hw * 9 * c * entry
      c = entry
  return 3 * (flops + 2 * batch * c * 10) / 1e9


def matmul_gflops(n: int = 4096) -> float:
  """The rate of one n^3 float32 matmul in XLA, GFLOP/s: the ceiling we compare against."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  return 2 * n**3 / median_time(jax.jit(lambda a: a @ a), a, repeats=5) / 1e9


def jax_step_and_forward(name: str, batch: int):
  """bnjax's train step and train-mode forward pass of VGG ``name`` as no-argument
  callables; the step carries its (donated) state from call to call."""
  model, state, step, batch_ = vgg_train_step(name, batch)
  forward = jax.jit(
    lambda p, s, x: model.apply(
      {'params': p, 'batch_stats': s}, x, train=True, mutable=['batch_stats']
    )[0]
  )
  holder = {'state': state}

  def run_step():
    holder['state'], metrics = step(holder['state'], batch_)
    return metrics

  def run_forward():
    s = holder['state']
    return forward(s.params, s.batch_stats, batch_['inputs'])

  return run_step, run_forward


def ratio_summary(ours: list[float], theirs: list[float]) -> str:
  """'median (lowest-highest over rounds)' of the per-round ratios ours / theirs."""
  ratios = [a / b for a, b in zip(ours, theirs)]
  return f'{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='vgg11,vgg16')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3, help='calls per side in each round')
  args = parser.parse_args()
  print(
    f'train step, batch {args.batch}, float32, {jax.default_backend()}; '
    f'matmul ceiling {matmul_gflops():.0f} GFLOP/s; {args.rounds} rounds of '
    f'{args.repeats} calls per side, interleaved'
  )
  for name in args.models.split(','):
    gflop = step_gflop(name, args.batch)
    fns = dict(zip(('bnjax step', 'bnjax forward'), jax_step_and_forward(name, args.batch)))
    torch_fns = torch_vgg_train_step(name, args.batch)
    if torch_fns is not None:
      fns.update(zip(('torch step', 'torch forward'), torch_fns))
    t = interleaved_times(fns, args.rounds, args.repeats)
    j_step, j_fwd = statistics.median(t['bnjax step']), statistics.median(t['bnjax forward'])
    if torch_fns is None:
      print(
        f'{name}: bnjax step {j_step:.3f} s ({gflop / j_step:.0f} GFLOP/s), '
        f'forward {j_fwd:.3f} s (torch not installed)'
      )
      continue
    t_step, t_fwd = statistics.median(t['torch step']), statistics.median(t['torch forward'])
    print(
      f'{name} ({gflop:.3g} GFLOP a step): step bnjax/torch = '
      f'{ratio_summary(t["bnjax step"], t["torch step"])}  (bnjax {j_step:.3f} s = '
      f'{gflop / j_step:.0f} GFLOP/s, torch {t_step:.3f} s = {gflop / t_step:.0f} GFLOP/s); '
      f'forward bnjax/torch = {ratio_summary(t["bnjax forward"], t["torch forward"])}  '
      f'(bnjax {j_fwd:.3f} s, torch {t_fwd:.3f} s; target: step ratio <= 1.0, stretch <= 0.8)'
    )


if __name__ == '__main__':
  main()
