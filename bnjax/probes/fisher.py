"""Fisher matrices of a per-example loss: the empirical Fisher, and the Fisher of softmax
cross-entropy, exact and Monte-Carlo, as losses whose Hessians they are.

``PerExampleLoss`` gives the loss as c sum_n l_n, l_n(params) the loss of example n of N,
c = 1/N (reduction 'mean') or 1 ('sum'). With g_n = grad l_n [P], f_n the logits of
example n [C], p_n = softmax(f_n), J_n = d f_n / d params [C, P] and J_l = d l / d params
[N, P], the matrices (P x P) the probes multiply by are

  EF   = c sum_n g_n g_n^T = c J_l^T J_l                          (operator='ef')
  F    = c sum_n E_{y ~ p_n}[grad log p(y|x_n) grad log p(y|x_n)^T]
       = c sum_n J_n^T (diag(p_n) - p_n p_n^T) J_n                (operator='fisher_exact')
  F_MC = c sum_n (1/M) sum_m J_n^T r_nm r_nm^T J_n,
         r_nm = p_n - e_{y_nm}, y_nm ~ p_n, M = mc_samples         (operator='fisher')

(grad_f log p(y|x) = e_y - p, whose second moment under y ~ p is diag(p) - p p^T).
The scaling is curvlinops' (EFLinearOperator, FisherMCLinearOperator): the matrix
carries the loss's own factor c, so for 'mean' EF = (1/N) sum_n g_n g_n^T, and
tr(EF) = c sum_n ||g_n||^2. For softmax cross-entropy the Hessian of l_n in the logits
is diag(p_n) - p_n p_n^T whatever the label, so F is exactly the Gauss-Newton matrix:
'fisher_exact' = 'ggn'. EF is not F: it uses the observed labels, not the model's.

Each matrix is the Hessian, at params, of a quadratic in the outputs linearised at
params (u = J (p - params)): c/2 ||u||^2 for EF, c/2 sum_n u_n^T (diag(p_n) - p_n p_n^T)
u_n for F, c/(2M) sum_nm (r_nm . u_n)^2 for F_MC. The probes take their products as for
any Hessian (``operators.OPERATORS``): one Jacobian-vector product J v and one transpose
J^T w of the network per product, loop-safe convolutions on CPU. The Monte-Carlo labels
are drawn once, from ``PerExampleLoss.key``, when the operator is made: F_MC is the same
matrix on every product, as an operator must be.
"""

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from bnjax.probes._common import LossFn, Params


@dataclasses.dataclass(frozen=True)
class PerExampleLoss:
  """loss(params) = c sum_n l_n, l = example_loss(outputs_fn(params), targets) [N].

  Use it wherever a ``loss_fn`` goes; ``operator='ef' | 'fisher' | 'fisher_exact'`` need
  it (and ``operator='ggn'`` takes it as it takes a ``SplitLoss``).

  Attributes:
    outputs_fn: params -> outputs [N, ...]; for the default loss, logits [N, C].
    targets: [N] integer class labels for the default loss; otherwise whatever
      ``example_loss`` takes, with a leading axis of N.
    reduction: 'mean' (c = 1/N) or 'sum' (c = 1).
    example_loss: (outputs [N, ...], targets) -> [N], one loss per example. None: softmax
      cross-entropy -log softmax(f_n)[y_n], the likelihood 'fisher' and 'fisher_exact'
      need; 'ef' takes any.
    mc_samples: M, labels drawn per example for operator='fisher'.
    key: the PRNG key they are drawn from (None: jax.random.key(0)).
  """

  outputs_fn: Callable[[Params], jax.Array]
  targets: jax.Array
  reduction: Literal['mean', 'sum'] = 'mean'
  example_loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None
  mc_samples: int = 1
  key: jax.Array | None = None

  def __post_init__(self):
    if self.reduction not in ('mean', 'sum'):
      raise ValueError(f"PerExampleLoss: reduction must be 'mean' or 'sum', got {self.reduction!r}")
    if self.mc_samples < 1:
      raise ValueError(f'PerExampleLoss: mc_samples must be >= 1, got {self.mc_samples}')

  def example_losses(self, outputs: jax.Array) -> jax.Array:
    """[N]: l_n for outputs [N, ...] (checked: one-line errors for wrong shapes)."""
    if self.example_loss is None:
      logits = _check_logits(outputs, self.targets)
      log_p = jax.nn.log_softmax(logits)
      return -jnp.take_along_axis(log_p, self.targets[:, None], axis=1)[:, 0]
    losses = self.example_loss(outputs, self.targets)
    n = jnp.shape(outputs)[0] if jnp.ndim(outputs) else None
    if jnp.shape(losses) != (n,):
      raise ValueError(
        f'PerExampleLoss: example_loss must return one loss per example, [N] = '
        f'[{n}], got shape {jnp.shape(losses)}'
      )
    return losses

  def factor(self, n: int) -> float:
    """c: 1/N for 'mean', 1 for 'sum'."""
    return 1.0 / n if self.reduction == 'mean' else 1.0

  def loss_of_outputs(self, outputs: jax.Array) -> jax.Array:
    losses = self.example_losses(outputs)
    return self.factor(losses.shape[0]) * jnp.sum(losses)

  def losses(self, params: Params) -> jax.Array:
    """[N]: each example's loss l_n(params)."""
    return self.example_losses(self.outputs_fn(params))

  def __call__(self, params: Params) -> jax.Array:
    return self.loss_of_outputs(self.outputs_fn(params))

  def sampled_targets(self, params: Params) -> jax.Array:
    """[mc_samples, N]: the labels y_nm ~ softmax(f_n) that operator='fisher' draws."""
    return _draw_labels(self, _check_logits(self.outputs_fn(params), self.targets))


def _check_logits(outputs, targets) -> jax.Array:
  """outputs as logits [N, C] for targets [N] of integer labels, or a one-line error."""
  shape, t_shape = jnp.shape(outputs), jnp.shape(targets)
  if len(shape) != 2 or t_shape != shape[:1]:
    raise ValueError(
      'PerExampleLoss: softmax cross-entropy needs logits [N, C] and targets [N]; '
      f'outputs_fn gives {shape}, targets are {t_shape}'
    )
  if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
    raise TypeError(
      'PerExampleLoss: targets must be integer class labels [N] for softmax '
      f'cross-entropy, got {jnp.result_type(targets)}'
    )
  return outputs


def _draw_labels(loss: PerExampleLoss, logits: jax.Array) -> jax.Array:
  key = jax.random.key(0) if loss.key is None else loss.key
  return jax.random.categorical(key, logits, shape=(loss.mc_samples, logits.shape[0]))


def _check_softmax(loss: PerExampleLoss, operator: str) -> None:
  if loss.example_loss is not None:
    raise TypeError(
      f"operator='{operator}' is the Fisher of softmax cross-entropy: give "
      "PerExampleLoss no example_loss (or use operator='ef' or 'ggn')"
    )


def _linearised(fn, params: Params):
  """(fn(params), p -> J (p - params)): the value and first-order change of fn at params."""
  value, jvp_fn = jax.linearize(fn, params)
  return value, lambda p: jvp_fn(jax.tree.map(jnp.subtract, p, params))


def ef_loss(loss: PerExampleLoss, params: Params) -> LossFn:
  """A loss whose Hessian at ``params`` is the empirical Fisher c J_l^T J_l."""
  losses, change = _linearised(loss.losses, params)
  c = loss.factor(losses.shape[0])
  return lambda p: 0.5 * c * jnp.sum(jnp.square(change(p)))


def fisher_exact_loss(loss: PerExampleLoss, params: Params) -> LossFn:
  """A loss whose Hessian at ``params`` is F = c sum_n J_n^T (diag(p_n) - p_n p_n^T) J_n."""
  _check_softmax(loss, 'fisher_exact')
  logits, change = _linearised(loss.outputs_fn, params)
  probs = jax.nn.softmax(_check_logits(logits, loss.targets))  # [N, C]
  c = loss.factor(logits.shape[0])

  def quadratic(p):
    u = change(p)  # [N, C]
    return 0.5 * c * (jnp.sum(probs * u * u) - jnp.sum(jnp.square(jnp.sum(probs * u, axis=1))))

  return quadratic


def mc_fisher_loss(loss: PerExampleLoss, params: Params) -> LossFn:
  """A loss whose Hessian at ``params`` is F_MC = c/M sum_nm J_n^T r_nm r_nm^T J_n, its
  labels drawn once here (``PerExampleLoss.sampled_targets``)."""
  _check_softmax(loss, 'fisher')
  logits, change = _linearised(loss.outputs_fn, params)
  labels = _draw_labels(loss, _check_logits(logits, loss.targets))  # [M, N]
  residuals = jax.nn.softmax(logits) - jax.nn.one_hot(
    labels, logits.shape[1], dtype=logits.dtype
  )  # [M, N, C]
  c = loss.factor(logits.shape[0]) / loss.mc_samples
  return lambda p: 0.5 * c * jnp.sum(jnp.square(jnp.sum(residuals * change(p), axis=2)))


# operator= name -> the loss whose Hessian is that matrix (operators.py makes the products).
FISHER_LOSSES: dict[str, Callable[[PerExampleLoss, Params], LossFn]] = {
  'ef': ef_loss,
  'fisher': mc_fisher_loss,
  'fisher_exact': fisher_exact_loss,
}
