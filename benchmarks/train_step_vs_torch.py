r"""bnjax's train step against PyTorch eager on the same VGG, batch and precision.

  pip install -e ".[torch]"
  python benchmarks/train_step_vs_torch.py [--models=vgg11,vgg16] [--batch=128] [--repeats=5]

Same architecture (3x3 conv + BatchNorm + ReLU, 2x2 max-pools, one linear head), Glorot
init, float32, plain SGD at LR 0.1, batch 128, CIFAR shapes; one process, run back to
back. Prints the median time of each side as a ratio (bnjax / PyTorch: < 1 is faster),
each side's rate in model GFLOP/s (3x the forward convolutions' and head's multiply-adds
x 2, whatever the implementation computes) and, as the machine's ceiling, the rate of one
4096^3 float32 matmul in XLA. Without torch installed it prints bnjax's figures alone.
"""

from bnjax import xla_flags

xla_flags.apply()  # as bnjax.main runs; before jax is imported

import argparse

import jax

from bnjax.models import vgg
from timing import median_time
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


def jax_step_time(name: str, batch: int, repeats: int) -> tuple[float, float]:
  model, state, step, batch_ = vgg_train_step(name, batch)
  x = batch_['inputs']
  forward = jax.jit(lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=True,
                                                mutable=['batch_stats'])[0])
  holder = {'state': state}

  def run_step():
    holder['state'], m = step(holder['state'], batch_)
    jax.block_until_ready(m)

  t_step = median_time(run_step, repeats=repeats)
  s = holder['state']
  t_fwd = median_time(forward, s.params, s.batch_stats, x, repeats=repeats)
  return t_step, t_fwd


def torch_step_time(name: str, batch: int, repeats: int) -> tuple[float, float] | None:
  torch_step = torch_vgg_train_step(name, batch)
  if torch_step is None:
    return None
  step, forward = torch_step
  return median_time(step, repeats=repeats), median_time(forward, repeats=repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='vgg11,vgg16')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(f'train step, batch {args.batch}, float32, {jax.default_backend()}; '
        f'matmul ceiling {matmul_gflops():.0f} GFLOP/s')
  for name in args.models.split(','):
    gflop = step_gflop(name, args.batch)
    j_step, j_fwd = jax_step_time(name, args.batch, args.repeats)
    t = torch_step_time(name, args.batch, args.repeats)
    if t is None:
      print(f'{name}: bnjax step {j_step:.3f} s ({gflop / j_step:.0f} GFLOP/s), '
            f'forward {j_fwd:.3f} s (torch not installed)')
      continue
    t_step, t_fwd = t
    print(f'{name} ({gflop:.0f} GFLOP a step): step bnjax/torch = {j_step / t_step:.2f}  '
          f'(bnjax {j_step:.3f} s = {gflop / j_step:.0f} GFLOP/s, torch {t_step:.3f} s = '
          f'{gflop / t_step:.0f} GFLOP/s); forward bnjax/torch = {j_fwd / t_fwd:.2f}  '
          f'(bnjax {j_fwd:.3f} s, torch {t_fwd:.3f} s; target: step ratio <= 1.0, stretch <= 0.8)')


if __name__ == '__main__':
  main()
