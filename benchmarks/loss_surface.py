r"""A 21 x 21 loss surface against 441 loss evaluations one by one, on a VGG with BatchNorm.

  python benchmarks/loss_surface.py [--model=vgg11] [--width=0.25] [--batch=32]
      [--batch_sizes=1] [--rounds=3] [--repeats=1]

The loss is the train-mode one (batch statistics) of VGG ``--model`` with BN at channel
multiplier ``--width`` on one random CIFAR-shaped batch, at params + a d1 + b d2 with d1,
d2 filter-normalised random directions and a, b on linspace(-1, 1, 21). Sides, timed
interleaved (each round runs every side ``--repeats`` times in turn; benchmarks/timing.py):
- surface bs=K: ``probes.loss_surface``, one jitted program, K grid points vmapped per
  step of its lax.map (one side per ``--batch_sizes`` entry);
- python loop: a ``jax.jit``ted loss at (a, b), called 441 times from Python (dispatch
  is asynchronous: the calls queue while earlier ones run), results stacked;
- fori_loop: the same 441 losses in one jitted ``lax.fori_loop``.
The reference is the faster of the two loops, round by round. Prints each side's median
time (and range over rounds) and the ratio surface / reference (target <= 1.2).
"""

from bnjax import xla_flags

xla_flags.apply()  # as bnjax.main runs; before jax is imported

import argparse
import statistics

import jax
import jax.numpy as jnp
import optax

from bnjax import models, probes
from bnjax.probes._common import with_precision
from timing import interleaved_times

GRID = 21


def vgg_loss(name: str, width: float, batch: int):
  """(loss_for, params, batch): loss_for(batch)(params) is VGG ``name``'s train-mode
  cross-entropy with BN on ``batch`` = {'x' [B, 32, 32, 3], 'y' [B], 'stats'}."""
  model = models.get_model(name, 'batch', width=width)
  x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  variables = model.init(jax.random.key(2), x[:1], train=False)

  def loss_for(b):
    def loss_fn(p):
      out, _ = model.apply(
        {'params': p, 'batch_stats': b['stats']}, b['x'], train=True, mutable=['batch_stats']
      )
      return optax.softmax_cross_entropy_with_integer_labels(out, b['y']).mean()

    return loss_fn

  return loss_for, variables['params'], {'x': x, 'y': y, 'stats': variables['batch_stats']}


def shifted(params, d, a, b):
  return jax.tree.map(lambda w, v: w + a * v[0] + b * v[1], params, d)


def sides(loss_for, params, d, batch, batch_sizes):
  """{name: no-argument callable} for every side; each returns its 441 losses."""
  grid = jnp.linspace(-1.0, 1.0, GRID)
  a, b = (m.reshape(-1) for m in jnp.meshgrid(grid, grid, indexing='ij'))
  fns = {}
  for bs in batch_sizes:
    surface = jax.jit(
      lambda p, d, batch, bs=bs: (
        probes.loss_surface(loss_for(batch), p, d, grid, batch_size=bs).loss
      )
    )
    fns[f'surface bs={bs}'] = lambda f=surface: f(params, d, batch)
  one = jax.jit(with_precision(lambda p, d, a, b, batch: loss_for(batch)(shifted(p, d, a, b))))
  fns['python loop'] = lambda: jnp.stack(
    [one(params, d, a[i], b[i], batch) for i in range(GRID * GRID)]
  )

  def fori(p, d, batch):
    body = lambda i, out: out.at[i].set(loss_for(batch)(shifted(p, d, a[i], b[i])))
    return jax.lax.fori_loop(0, GRID * GRID, body, jnp.zeros(GRID * GRID))

  fori = jax.jit(with_precision(fori))
  fns['fori_loop'] = lambda: fori(params, d, batch)
  return fns


def spread(times: list[float]) -> str:
  return f'{statistics.median(times):.3f} s ({min(times):.3f}-{max(times):.3f})'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='vgg11')
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batch_sizes', default='1', help='loss_surface batch sizes to time')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=1, help='calls per side in each round')
  args = parser.parse_args()
  loss_for, params, batch = vgg_loss(args.model, args.width, args.batch)
  d = probes.random_directions(jax.random.key(3), params, 2)
  fns = sides(loss_for, params, d, batch, [int(s) for s in args.batch_sizes.split(',')])
  results = {name: fn() for name, fn in fns.items()}
  reference = results['python loop']
  for name, losses in results.items():  # every side computes the same surface
    gap = float(jnp.max(jnp.abs(losses.reshape(-1) - reference) / jnp.abs(reference)))
    assert gap < 1e-4, f'{name} differs from the python loop by {gap:.2g} (relative)'
  print(
    f'{args.model} with BN (train mode), width {args.width}, batch {args.batch}, '
    f'{jax.default_backend()}, {sum(x.size for x in jax.tree.leaves(params)):,} params; '
    f'{GRID} x {GRID} grid; {args.rounds} rounds of {args.repeats} calls per side'
  )
  t = interleaved_times(fns, args.rounds, args.repeats)
  loops = ('python loop', 'fori_loop')
  best = [min(p, f) for p, f in zip(t['python loop'], t['fori_loop'])]
  for name in loops:
    print(
      f'  {name:14s} {spread(t[name])}  ({statistics.median(t[name]) / GRID**2 * 1e3:.2f}'
      ' ms a loss)'
    )
  for name in fns:
    if name in loops:
      continue
    ratios = [s / r for s, r in zip(t[name], best)]
    print(
      f'  {name:14s} {spread(t[name])}  surface / faster loop = '
      f'{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})'
      '   (target <= 1.2)'
    )


if __name__ == '__main__':
  main()
