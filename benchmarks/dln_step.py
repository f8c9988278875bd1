r"""The DLN train step per normaliser, as a ratio to the unnormalised step, side by side.

  python benchmarks/dln_step.py [--norms=none,batch,lp2,layer] [--steps=1000] [--repeats=5]

The paper's 25-layer 10x10 deep linear network, full batch (1,000 samples), plain SGD,
``--steps`` steps in one jitted ``lax.scan`` (as the trainer runs them, no probes).
Prints the time per step and its ratio to the 'none' step. Goal (issue 12): the BN step
at most 2x the unnormalised one.
"""

from bnjax import xla_flags

xla_flags.apply('dln')  # as bnjax.main runs a DLN config; before jax is imported

import argparse

import jax
import jax.numpy as jnp
import optax

from bnjax import models, objective, train
from timing import median_time


def step_time(norm: str, steps: int, repeats: int) -> float:
  model = models.get_model('dln', norm, depth=25, width=10)
  x = jax.random.normal(jax.random.key(0), (1000, 10))
  y = jax.random.normal(jax.random.key(1), (1000, 10))
  tx = optax.sgd(1e-6)
  v = model.init(jax.random.key(2), x, train=False)
  state = train.TrainState.create(v, tx)
  step = train.make_train_step(objective.make_objective(model, 'sum_squared'), tx, 1e-6)
  chunk = train.make_train_chunk(step, {}, jnp.int32(3))  # the trainer's scan, no probes
  batches = {
    'inputs': jnp.broadcast_to(x, (steps, *x.shape)),
    'targets': jnp.broadcast_to(y, (steps, *y.shape)),
  }
  run = jax.jit(lambda s, b: chunk(s, b)[0].params)
  return median_time(run, state, batches, repeats=repeats) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--norms', default='none,batch,lp2,layer')
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  times = {norm: step_time(norm, args.steps, args.repeats) for norm in args.norms.split(',')}
  base = times.get('none')
  for norm, t in times.items():
    ratio = f'{t / base:.2f}x the none step' if base else ''
    print(f'dln {norm:6s}: {t * 1e3:.3f} ms/step  {ratio}')
  print('(goal: batch <= 2x none)')


if __name__ == '__main__':
  main()
