"""Curvature operators: the matrices the probes multiply by, and single products with them.

Products: ``hvp`` (H v), ``hvp_operator`` (v -> H v, the gradient linearised once),
``gnvp`` (G v = J^T H_out J v), ``ggn_loss`` (a loss whose Hessian is G) and
``directional_curvature`` (v^T H v / ||v||^2). ``SplitLoss`` splits a loss at the
network's outputs, which the Gauss-Newton matrix G needs; ``PerExampleLoss`` (fisher.py)
splits it into examples too, which the Fisher matrices need.

``curvature_operator`` is where every probe that multiplies many times (lanczos.py,
estimators.py) gets its matvec. ``OPERATORS`` maps each ``operator=`` name to a factory
(loss_fn, params, block) -> (params, v -> M v): the Hessian, the GGN, the empirical
Fisher, the Monte-Carlo and the exact Fisher. A new operator is one more factory, one
more entry there and its name in ``Operator``, with no change to the algorithms.
"""

import dataclasses
import functools
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from bnjax.probes._common import (
  Block,
  LossFn,
  Params,
  check_inputs,
  restrict,
  tree_vdot,
  with_precision,
)
from bnjax.probes.convolutions import for_loops
from bnjax.probes.fisher import FISHER_LOSSES, PerExampleLoss

Matvec = Callable[[Params], Params]
# (loss_fn, params, block or None) -> (the params M acts on, v -> M v).
MatvecFactory = Callable[[LossFn, Params, Block | None], tuple[Params, Matvec]]


def _hvp(loss_fn: LossFn, params: Params, v: Params) -> Params:
  # Forward-over-reverse: one forward-mode pass through the gradient computation.
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _hvp_operator(loss_fn: LossFn, params: Params) -> Matvec:
  # Undecorated, for the probes built on it: they pass their own precision scope down.
  # Its products run inside loops: on CPU, convolutions in a loop-safe form (for_loops).
  _, linear_hvp = jax.linearize(jax.grad(for_loops(loss_fn)), params)
  return linear_hvp


@dataclasses.dataclass(frozen=True)
class SplitLoss:
  """loss_fn(params) = loss_of_outputs(outputs_fn(params)), split at the network's outputs.

  Use it wherever a ``loss_fn`` goes; probes with ``operator='ggn'`` need the split to
  form the Gauss-Newton matrix J^T H_out J (J = d outputs / d params).
  """

  outputs_fn: Callable[[Params], jax.Array]
  loss_of_outputs: Callable[[jax.Array], jax.Array]

  def __call__(self, params: Params) -> jax.Array:
    return self.loss_of_outputs(self.outputs_fn(params))


@with_precision
def hvp(loss_fn: LossFn, params: Params, v: Params) -> Params:
  """Exact Hessian-vector product H v, H = d^2 loss / d params^2; a pytree like params."""
  check_inputs(loss_fn, params)
  return _hvp(loss_fn, params, v)


@with_precision
def hvp_operator(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
  """The map v -> H v at fixed ``params``, for many products (Lanczos, Hutchinson).

  The gradient's forward and backward passes run once (``jax.linearize``); each product
  then costs only the tangent passes: on VGG-11 with BN, batch 128, this CPU, 1.5x a
  loss-and-gradient per product against 2.2-2.3x for a standalone ``hvp``. Use it inside
  the same jitted function; it holds the gradient's intermediates while it lives. On the
  CPU backend the model's convolutions run in a form fast inside loops
  (``probes.convolutions_for_loops``).
  """
  check_inputs(loss_fn, params)
  return _hvp_operator(loss_fn, params)


@with_precision
def gnvp(
  outputs_fn: Callable[[Params], jax.Array],
  loss_of_outputs: Callable[[jax.Array], jax.Array],
  params: Params,
  v: Params,
) -> Params:
  """Gauss-Newton-vector product G v = J^T H_out J v, J = d outputs / d params.

  loss = loss_of_outputs(outputs_fn(params)); H_out is the Hessian of loss_of_outputs at
  the outputs (positive semi-definite for a convex loss such as cross-entropy).
  """
  check_inputs(lambda p: loss_of_outputs(outputs_fn(p)), params)
  outputs, jvp_fn = jax.linearize(outputs_fn, params)  # one forward pass for J and J^T
  hjv = jax.jvp(jax.grad(loss_of_outputs), (outputs,), (jvp_fn(v),))[1]
  (gv,) = jax.linear_transpose(jvp_fn, params)(hjv)
  return gv


def ggn_loss(
  outputs_fn: Callable[[Params], jax.Array],
  loss_of_outputs: Callable[[jax.Array], jax.Array],
  params: Params,
) -> LossFn:
  """A loss whose Hessian at ``params`` is the Gauss-Newton matrix G = J^T H_out J.

  loss(p) = loss_of_outputs(f(params) + J (p - params)), the loss of the outputs
  linearised at ``params``: its gradient at ``params`` is the true one and its Hessian
  the GGN (positive semi-definite for a convex loss_of_outputs such as cross-entropy).
  Hand it to any probe (top_eigenvalues, hessian_trace_hutchpp, spectral_density,
  hessian_diagonal, ...) to get the GGN version; evaluate those probes at ``params``.
  """
  outputs, jvp_fn = jax.linearize(outputs_fn, params)
  difference = lambda p: jax.tree.map(jnp.subtract, p, params)
  return lambda p: loss_of_outputs(outputs + jvp_fn(difference(p)))


@with_precision
def directional_curvature(
  loss_fn: LossFn, params: Params, v: Params, block: Block | None = None
) -> jax.Array:
  """v^T H v / ||v||^2, the curvature along v (with v = grad: the paper's quadratic form).

  With ``block``, v is a block's parameters (as ``restrict`` returns them) and H that
  block's diagonal block of the Hessian.
  """
  if block is not None:
    loss_fn, params = restrict(loss_fn, params, block)
  check_inputs(loss_fn, params)
  return tree_vdot(v, _hvp(loss_fn, params, v)) / tree_vdot(v, v)


# ------------------------------------------------------------- operators by name
def _hessian(loss_fn: LossFn, params: Params, block: Block | None) -> tuple[Params, Matvec]:
  """H = d^2 loss / d params^2, whole or ``block``'s diagonal block."""
  if block is not None:
    loss_fn, params = restrict(loss_fn, params, block)
  check_inputs(loss_fn, params)
  return params, _hvp_operator(loss_fn, params)


def _ggn(loss_fn: LossFn, params: Params, block: Block | None) -> tuple[Params, Matvec]:
  """G = J^T H_out J (loss_fn a ``SplitLoss``), whole or ``block``'s diagonal block."""
  if isinstance(loss_fn, PerExampleLoss):
    loss_fn = SplitLoss(loss_fn.outputs_fn, loss_fn.loss_of_outputs)
  if not isinstance(loss_fn, SplitLoss):
    raise TypeError(
      "operator='ggn' needs loss_fn=probes.SplitLoss(outputs_fn, loss_of_outputs): "
      f'the GGN is formed at the outputs; got {type(loss_fn).__name__}'
    )
  if block is not None:
    outputs_fn, params = restrict(loss_fn.outputs_fn, params, block)
    loss_fn = SplitLoss(outputs_fn, loss_fn.loss_of_outputs)
  check_inputs(loss_fn, params)
  # _hvp_operator makes the convolutions loop-safe, as for H v.
  return params, _hvp_operator(
    ggn_loss(loss_fn.outputs_fn, loss_fn.loss_of_outputs, params), params
  )


def _fisher(
  name: str, loss_fn: LossFn, params: Params, block: Block | None
) -> tuple[Params, Matvec]:
  """The Fisher matrix ``name`` (fisher.py; loss_fn a ``PerExampleLoss``), whole or
  ``block``'s diagonal block: the Hessian of fisher.FISHER_LOSSES[name] at params."""
  if not isinstance(loss_fn, PerExampleLoss):
    raise TypeError(
      f"operator='{name}' needs loss_fn=probes.PerExampleLoss(outputs_fn, "
      f'targets): it is formed from the examples; got {type(loss_fn).__name__}'
    )
  if block is not None:
    outputs_fn, params = restrict(loss_fn.outputs_fn, params, block)
    loss_fn = dataclasses.replace(loss_fn, outputs_fn=outputs_fn)
  check_inputs(loss_fn, params)
  return params, _hvp_operator(FISHER_LOSSES[name](loss_fn, params), params)


# Every operator the many-product probes take, by name; keep Operator in step.
OPERATORS: dict[str, MatvecFactory] = {
  'hessian': _hessian,
  'ggn': _ggn,
  **{name: functools.partial(_fisher, name) for name in FISHER_LOSSES},
}
Operator = Literal['hessian', 'ggn', 'ef', 'fisher', 'fisher_exact']


def curvature_operator(
  loss_fn: LossFn, params: Params, block: Block | None = None, operator: Operator = 'hessian'
) -> tuple[Params, Matvec]:
  """(params, v -> M v) for M the ``operator`` named (a key of ``OPERATORS``), whole or
  ``block``'s diagonal block: the common start of every probe that multiplies by M many
  times. With ``block``, the params returned are the block's (as ``restrict`` gives them).
  """
  if operator not in OPERATORS:
    names = ' or '.join(map(repr, OPERATORS))
    raise ValueError(f'operator must be {names}, got {operator!r}')
  return OPERATORS[operator](loss_fn, params, block)
