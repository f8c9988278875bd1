"""The loss landscape along the gradient (the paper's Fig. 4, Appendix A.2.2)."""

import jax
import jax.numpy as jnp

from bnjax.probes._common import (
  LossFn,
  Params,
  check_inputs,
  map_in_batches,
  result,
  tree_axpy,
  tree_norm,
  with_precision,
)
from bnjax.probes._common import assumed_backend
from bnjax.probes.convolutions import for_loops, has_convolutions


@result
class Landscape:
  loss: jax.Array  # [n] L(theta - eta g) per step size eta
  grad_diff: jax.Array  # [n] ||grad L(theta - eta g) - g||
  beta: jax.Array  # [] max over eta of grad_diff / ||eta g||, the effective beta-smoothness
  loss_at_start: jax.Array  # [] L(theta)
  grad_norm: jax.Array  # [] ||g||


def default_batch_size(num_step_sizes: int, loss_fn: LossFn, params: Params) -> int:
  """How many step sizes one probe call evaluates at once (vmapped); 0: unrolled.

  Each step size has its own parameters, so vmapping turns every convolution into a
  grouped one, and XLA:CPU runs those, and any gradient inside a loop body, many times
  slower than the same gradient on its own (VGG-11: ~20x in a lax.map, ~50x vmapped).
  On CPU a loss with convolutions therefore unrolls its few step sizes into one program.
  Any other loss, and every loss on GPU and TPU, vmaps them all at once: the DLN's train
  program with every probe then has 25,235 HLO instructions instead of 54,713 and loads
  from the compilation cache in 0.74 s instead of 2.02 s (``benchmarks/cache_read.py
  --config=configs/dln_bn.py``); its whole run took 0.94x the wall time and 0.68x the
  peak memory of the unrolled one (10,000 steps, 3 runs of each, interleaved).
  """
  if assumed_backend() == 'cpu' and has_convolutions(loss_fn, params):
    return 0
  return num_step_sizes


@with_precision
def gradient_landscape(
  loss_fn: LossFn,
  params: Params,
  step_sizes: jax.Array,
  batch_size: int | None = None,
  gradient: Params | None = None,
  loss_at_start: jax.Array | None = None,
) -> Landscape:
  """Probes theta - eta g for every eta in ``step_sizes`` ([n], > 0), g = grad L(theta).

  Panel (a): the band between min and max of ``loss``; (b) of ``grad_diff``; (c) ``beta``.
  All step sizes are evaluated in one compiled call: ``batch_size`` at a time vmapped,
  or with 0 unrolled (None: ``default_batch_size``). ``gradient``: g, when the caller
  has it already (a train step does), saves one gradient evaluation; ``loss_at_start``
  (only with ``gradient``): L(theta), which then saves a forward pass as well.
  NaN-safe: a step size whose loss or gradient is not finite gives NaN in ``loss`` /
  ``grad_diff`` and is left out of ``beta``; ``beta`` is NaN when g = 0 (undefined) or
  when no step size gives a finite value.
  """
  check_inputs(loss_fn, params)
  # In the parameters' precision: float32 step sizes cost a float64 run 1e-8 of accuracy.
  step_sizes = jnp.asarray(step_sizes, jnp.result_type(*jax.tree.leaves(params)))
  if step_sizes.ndim != 1:
    raise ValueError(f'step_sizes must be a 1-D array, got shape {step_sizes.shape}')
  if gradient is None:
    if loss_at_start is not None:
      raise ValueError('loss_at_start is used only together with gradient')
    loss0, g = jax.value_and_grad(loss_fn)(params)
  else:
    g = gradient
    loss0 = loss_fn(params) if loss_at_start is None else jnp.asarray(loss_at_start)
  gnorm = tree_norm(g)

  def at(eta):
    loss, grad = jax.value_and_grad(loss_fn)(tree_axpy(-eta, g, params))
    return loss, tree_norm(tree_axpy(-1.0, g, grad))

  n = step_sizes.shape[0]
  if batch_size is None:
    batch_size = default_batch_size(n, loss_fn, params)
  if batch_size == 0:
    values = [at(step_sizes[i]) for i in range(n)]  # one program, n gradients in sequence
    loss, grad_diff = (jnp.stack(v) for v in zip(*values))
  else:  # in a loop: on CPU, loop-safe convolutions (for_loops)
    loss_fn = for_loops(loss_fn)
    loss, grad_diff = map_in_batches(at, step_sizes, batch_size)
  ratio = grad_diff / (step_sizes * gnorm)
  ok = jnp.isfinite(ratio) & jnp.isfinite(loss) & (gnorm > 0)
  beta = jnp.where(jnp.any(ok), jnp.max(jnp.where(ok, ratio, -jnp.inf)), jnp.nan)
  return Landscape(loss, grad_diff, beta, loss0, gnorm)
