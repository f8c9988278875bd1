r"""Probe costs on VGG-11 with BatchNorm, batch 128, CIFAR shapes, measured side by side.

Prints each probe's time as a ratio to one loss-and-gradient (or one train step), the
Lanczos residual after 20 HVPs against power iteration's, and compiled peak memory.

  python benchmarks/probes_vgg.py [--model=vgg11] [--batch=128] [--repeats=5]

Targets (issue 3): hvp <= 2.2x loss-and-grad; top eigenvalue to 1e-3 relative residual
in <= 20 HVPs; landscape over k=4 step sizes <= k + 0.5 train steps (k gradients at the
shifted points; g = grad L(theta) comes from the train step, as in training, or costs one
more gradient standalone); ics over L layers
<= L loss-and-grads; peak memory of hvp <= 2x that of loss-and-grad.
"""

from bnjax import xla_flags

xla_flags.apply()  # as bnjax.main runs; before jax is imported

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from bnjax import models, probes
from bnjax.probes._common import tree_norm, tree_vdot, with_precision
from timing import median_time as timed


def peak_bytes(fn, *args) -> int:
  """XLA's compiled footprint: arguments + outputs + temporaries (aliasing ignored)."""
  m = fn.lower(*args).compile().memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='vgg11')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  model = models.get_model(args.model, 'batch')
  x = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3))
  y = jax.random.randint(jax.random.key(1), (args.batch,), 0, 10)
  variables = model.init(jax.random.key(2), x[:1], train=False)
  params, stats = variables['params'], variables['batch_stats']
  batch = {'x': x, 'y': y, 'stats': stats}
  lr = 0.1

  def loss_fn_for(batch, model=model):
    def loss_fn(p):
      out, _ = model.apply(
        {'params': p, 'batch_stats': batch['stats']},
        batch['x'],
        train=True,
        mutable=['batch_stats'],
      )
      return optax.softmax_cross_entropy_with_integer_labels(out, batch['y']).mean()

    return loss_fn

  n_layers = models.num_layers(model)
  layers = [models.kernel_path(model, k) for k in range(1, n_layers + 1)]
  step_sizes = jnp.array([0.5, 1.0, 2.0, 4.0]) * lr

  # Probes trace at matmul precision 'highest' (their default); the baselines likewise, so
  # that ratios compare like with like. (A `with` around jax.jit would not do: jit traces
  # at the first call.)
  loss_and_grad = jax.jit(with_precision(lambda p, b: jax.value_and_grad(loss_fn_for(b))(p)))
  train_step = jax.jit(
    with_precision(
      lambda p, b: jax.tree.map(lambda w, g: w - lr * g, p, jax.grad(loss_fn_for(b))(p))
    )
  )
  v = jax.tree.map(jnp.ones_like, params)
  hvp = jax.jit(lambda p, b, v: probes.hvp(loss_fn_for(b), p, v))
  # The other exact ordering, for comparison (probes.hvp is forward-over-reverse).
  hvp_rev_fwd = jax.jit(
    with_precision(lambda p, b, v: jax.grad(lambda q: jax.jvp(loss_fn_for(b), (q,), (v,))[1])(p))
  )
  landscape = jax.jit(lambda p, b: probes.gradient_landscape(loss_fn_for(b), p, step_sizes))
  # As in training, where the step's loss and gradient are at hand: passed in.
  landscape_g = jax.jit(
    lambda p, b, l, g: probes.gradient_landscape(
      loss_fn_for(b), p, step_sizes, gradient=g, loss_at_start=l
    )
  )
  loss0, grads = loss_and_grad(params, batch)
  new_params = train_step(params, batch)
  ics = jax.jit(lambda p, q, b: probes.ics(loss_fn_for(b), p, q, layers))
  # Lanczos loops over HVPs: the model as differentiated inside control flow (on CPU its
  # convolutions as slices + matmul, see bnjax.models.for_control_flow).
  loop_model = models.for_control_flow(model)
  eig = jax.jit(
    lambda p, b, k: probes.top_eigenvalues(loss_fn_for(b, loop_model), p, k, k=1, num_iterations=20)
  )

  print(
    f'{args.model} with BatchNorm, batch {args.batch}, {jax.default_backend()}, '
    f'{sum(a.size for a in jax.tree.leaves(params)):,} parameters, {n_layers} conv layers'
  )
  t_lg = timed(loss_and_grad, params, batch, repeats=args.repeats)
  t_step = timed(train_step, params, batch, repeats=args.repeats)
  t_hvp = timed(hvp, params, batch, v, repeats=args.repeats)
  t_hvp_rf = timed(hvp_rev_fwd, params, batch, v, repeats=args.repeats)
  t_land = timed(landscape, params, batch, repeats=args.repeats)
  t_land_g = timed(landscape_g, params, batch, loss0, grads, repeats=args.repeats)
  t_ics = timed(ics, params, new_params, batch, repeats=max(1, args.repeats // 2))

  # Many products at the same params (Lanczos, Hutchinson): hvp_operator's marginal cost.
  def products(n):
    def f(p, b, v):
      apply_h = probes.hvp_operator(loss_fn_for(b), p)
      return [apply_h(jax.tree.map(lambda a: a * (i + 1.0), v)) for i in range(n)]

    return jax.jit(f)

  t_op1 = timed(products(1), params, batch, v, repeats=args.repeats)
  t_op5 = timed(products(5), params, batch, v, repeats=args.repeats)
  print(f'hvp / loss-and-grad:                  {t_hvp / t_lg:5.2f}x   (target <= 2.2)')
  print(f'  ... reverse-over-forward instead:   {t_hvp_rf / t_lg:5.2f}x')
  print(f'  ... each further product of hvp_operator: {(t_op5 - t_op1) / 4 / t_lg:5.2f}x')
  print(
    f"landscape(4 etas) / train step, in training (the step's loss and gradient given): "
    f'{t_land_g / t_step:5.2f}x   (target <= 4.5)'
  )
  print(f'  ... standalone (computes g itself: one more gradient): {t_land / t_step:5.2f}x')
  print(
    f'ics({n_layers} layers) / loss-and-grad:         {t_ics / t_lg:5.2f}x   (target <= {n_layers})'
  )

  r = jax.block_until_ready(eig(params, batch, jax.random.key(3)))  # compiles
  t = time.perf_counter()
  r = jax.block_until_ready(eig(params, batch, jax.random.key(3)))
  t_eig = time.perf_counter() - t
  rel = float(r.residuals[0] / jnp.abs(r.eigenvalues[0]))
  print(
    f'Lanczos, 20 HVPs: lambda_max {float(r.eigenvalues[0]):.4g}, relative residual '
    f'{rel:.1e}   (target <= 1e-3); {t_eig / t_hvp:.1f} standalone hvp times'
  )
  vec = jax.tree.map(lambda a: jax.random.normal(jax.random.key(4), a.shape), params)
  vec = jax.tree.map(lambda a: a / tree_norm(vec), vec)
  power_rel = None
  for i in range(1, 61):
    hv = hvp(params, batch, vec)
    lam = tree_vdot(vec, hv)
    power_rel = float(tree_norm(jax.tree.map(lambda h, a: h - lam * a, hv, vec)) / jnp.abs(lam))
    if power_rel <= rel or power_rel < 1e-3:
      break
    vec = jax.tree.map(lambda a: a / tree_norm(hv), hv)
  print(f'power iteration: relative residual {power_rel:.1e} after {i} HVPs')

  m_lg = peak_bytes(loss_and_grad, params, batch)
  m_hvp = peak_bytes(hvp, params, batch, v)
  print(
    f'peak memory: loss-and-grad {m_lg / 2**20:.0f} MiB, hvp {m_hvp / 2**20:.0f} MiB, '
    f'ratio {m_hvp / m_lg:.2f}x   (target <= 2)'
  )


if __name__ == '__main__':
  main()
