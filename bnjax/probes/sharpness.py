"""Sharpness that BatchNorm's rescaling cannot fool (adaptive), and Keskar's epsilon-sharpness.

BN makes the loss invariant to each channel's pre-BN weight scale: L(c w) = L(w) for one
channel's weights w and any c > 0. The Hessian block of those weights then scales as
1/c^2, so lambda_max can be moved at will without changing the function computed.
Adaptive sharpness (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023, "A modern look
at the relationship between sharpness and generalization") perturbs in a ball scaled
elementwise by T = |w| (+ eta): delta = T * u with u in a plain l_p ball of radius rho.
Rescaling a channel by c maps w + T u to c (w + T u), so every value here is unchanged
(exactly for eta = 0; float32 rounding aside).

Both probes work in the u coordinates, where the ball is a plain l_p ball; the gradient
there is T * grad L. Worst case: projected gradient ascent that always steps from the
best point found, with normalised steps (p=2: T g / ||T g||; p=inf: sign(T g)) of size
``step_size`` (default 2 rho, Andriushchenko et al.'s initial step: from u = 0 the first
step lands on the sphere, or the box's corner, along the gradient, ASAM's one-step
point), halved after every step that fails to raise the loss. Their APGD adds momentum
and halves at checkpoints; both give a lower bound on the maximum. Elements with T = 0
(ignored leaves, zero weights when eta = 0) are never perturbed.
"""

from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from bnjax.probes._common import (
  Block,
  LossFn,
  Params,
  check_inputs,
  leaf_paths,
  map_in_batches,
  normal_like,
  restrict,
  result,
  tree_axpy,
  tree_norm,
  with_precision,
)
from bnjax.probes.convolutions import for_loops


@result
class Sharpness:
  sharpness: jax.Array  # [] worst: the largest L(w + delta) - L(w) found; average: the mean
  stderr: jax.Array  # [] average: standard error of the mean; worst: NaN (a lower bound)
  loss: jax.Array  # [] L(w)
  values: jax.Array  # worst: [num_steps + 1] L(w + delta_t) - L(w) at each ascent iterate
  #                    (t = 0 the start); average: [num_samples], one per sample


class _Ball(NamedTuple):
  """The l_p ball of radius rho in u = delta / T coordinates, and how ascent walks it."""

  rho: float
  p: float  # 2.0 or inf
  num_steps: int
  step_size: float
  random_init: bool


def _check_p(p) -> float:
  if p in (2, '2'):
    return 2.0
  if p in ('inf', float('inf')):
    return float('inf')
  raise ValueError(f'p must be 2 or inf, got {p!r}')


def _scale(params: Params, eta: float, ignore: Sequence[str]) -> Params:
  """T: |w| + eta elementwise; 0 on leaves whose key path contains an ``ignore`` string."""
  ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
  names = ['/'.join(map(str, p)).lower() for p in leaf_paths(params)]
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten(
    [
      jnp.zeros_like(w) if any(s.lower() in n for s in ignore) else jnp.abs(w) + eta
      for n, w in zip(names, leaves)
    ]
  )


def _objective(loss_fn: LossFn, params: Params, scale: Params):
  """u -> L(params + T u), in the loop-safe form (on CPU) the probes differentiate."""
  loss_fn = for_loops(loss_fn)
  return lambda u: loss_fn(jax.tree.map(lambda w, t, x: w + t * x, params, scale, u))


def _project(u: Params, ball: _Ball) -> Params:
  if ball.p == 2:
    norm = tree_norm(u)
    factor = jnp.where(norm > ball.rho, ball.rho / jnp.where(norm > 0, norm, 1.0), 1.0)
    return jax.tree.map(lambda x: factor * x, u)
  return jax.tree.map(lambda x: jnp.clip(x, -ball.rho, ball.rho), u)


def _direction(g: Params, ball: _Ball) -> Params:
  if ball.p == 2:
    norm = tree_norm(g)
    return jax.tree.map(lambda x: x / jnp.where(norm > 0, norm, 1.0), g)
  return jax.tree.map(jnp.sign, g)


def _start(key: jax.Array, scale: Params, ball: _Ball) -> Params:
  """u_0: 0, or (random_init) a uniform point of the sphere (p=2) or the box (p=inf)."""
  if not ball.random_init:
    return jax.tree.map(jnp.zeros_like, scale)
  if ball.p == 2:
    z = jax.tree.map(lambda x, t: jnp.where(t > 0, x, 0.0), normal_like(key, scale), scale)
    return jax.tree.map(lambda x: ball.rho * x / tree_norm(z), z)
  leaves, treedef = jax.tree.flatten(scale)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
    [ball.rho * jax.random.uniform(k, t.shape, t.dtype, -1.0, 1.0) for k, t in zip(keys, leaves)]
  )


def _worst(objective, scale: Params, key: jax.Array, ball: _Ball):
  """Monotone projected ascent on objective(u) over the ball: (best value, values [steps+1])."""
  value_and_grad = jax.value_and_grad(objective)
  u0 = _start(key, scale, ball)
  v0, g0 = value_and_grad(u0)

  def step(t, carry):
    best_u, best_v, best_g, alpha, values = carry
    u = _project(tree_axpy(alpha, _direction(best_g, ball), best_u), ball)
    v, g = value_and_grad(u)
    better = v > best_v  # a NaN loss counts as a failed step
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(better, a, b), new, old)
    return (
      pick(u, best_u),
      jnp.where(better, v, best_v),
      pick(g, best_g),
      jnp.where(better, alpha, alpha / 2),
      values.at[t + 1].set(v),
    )

  values = jnp.zeros(ball.num_steps + 1, v0.dtype).at[0].set(v0)
  init = (u0, v0, g0, jnp.asarray(ball.step_size, v0.dtype), values)
  _, best, _, _, values = jax.lax.fori_loop(0, ball.num_steps, step, init)
  return best, values


def _average(objective, scale: Params, keys: jax.Array, ball: _Ball, batch_size: int):
  """objective(rho z), one sample z ~ N(0, I) (p=2) or U[-1, 1] (p=inf) per key: [keys]."""

  def sample(k):
    if ball.p == 2:
      z = normal_like(k, scale)
    else:
      leaves, treedef = jax.tree.flatten(scale)
      keys = jax.random.split(k, len(leaves))
      z = treedef.unflatten(
        [jax.random.uniform(kk, t.shape, t.dtype, -1.0, 1.0) for kk, t in zip(keys, leaves)]
      )
    return objective(jax.tree.map(lambda x: ball.rho * x, z))

  return map_in_batches(sample, keys, batch_size)


def _prepare(loss_fn: LossFn, params: Params, block: Block | None):
  if block is not None:
    loss_fn, params = restrict(loss_fn, params, block)
  check_inputs(loss_fn, params)
  return loss_fn, params


@with_precision
def adaptive_sharpness(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  rho: float,
  kind: Literal['worst', 'average'] = 'worst',
  p: float = 2,
  num_steps: int = 20,
  num_samples: int = 100,
  eta: float = 0.0,
  step_size: float | None = None,
  random_init: bool = False,
  ignore: Sequence[str] = (),
  block: Block | None = None,
  batch_size: int = 1,
) -> Sharpness:
  """Adaptive sharpness of ``loss_fn`` at w = params, invariant to BN's channel rescaling.

  kind='worst': max over ||delta / T||_p <= rho of L(w + delta) - L(w), T = |w| + eta
  elementwise, by the ascent of the module docstring: ``num_steps`` steps of size
  ``step_size`` (None: 2 rho), from u = 0 or (``random_init``, using ``key``) a random
  point of the sphere / box; ``num_steps`` + 1 loss-and-gradients. At an exact
  stationary point the gradient is 0: start at random. kind='average':
  E[L(w + delta)] - L(w) over delta = rho T z, z ~ N(0, I) (p=2) or U[-1, 1] (p=inf),
  from ``num_samples`` samples (``batch_size`` vmapped at a time), with its standard error.
  eta: ASAM's offset (they use 0.01); 0, as Andriushchenko et al., keeps exact invariance.
  Which leaves move: all, as in Andriushchenko et al.'s code (BN scale and offset and
  biases too, each scaled by its own |w|; ASAM's code moves biases unscaled, T = 1);
  ``ignore`` (key-path substrings, case-insensitive, e.g. ('bias', 'norm')) or ``block``
  (as in ``restrict``: only that block moves) narrow it. BN mode is ``loss_fn``'s (train
  mode: batch statistics; eval mode: running averages, which must then be rescaled with
  the weights for the invariance, as training them at that scale would have done).
  """
  if kind not in ('worst', 'average'):
    raise ValueError(f"kind must be 'worst' or 'average', got {kind!r}")
  if kind == 'average' and num_samples < 2:
    raise ValueError(f'num_samples must be >= 2 for a standard error, got {num_samples}')
  if not rho > 0 or num_steps < 1:
    raise ValueError(f'need rho > 0 and num_steps >= 1, got {rho}, {num_steps}')
  p = _check_p(p)
  loss_fn, params = _prepare(loss_fn, params, block)
  scale = _scale(params, eta, ignore)
  objective = _objective(loss_fn, params, scale)
  loss = objective(jax.tree.map(jnp.zeros_like, params))
  if kind == 'average':
    keys = jax.random.split(key, num_samples)
    values = _average(objective, scale, keys, _Ball(rho, p, 0, 0.0, True), batch_size) - loss
    stderr = jnp.std(values, ddof=1) / jnp.sqrt(num_samples)
    return Sharpness(jnp.mean(values), stderr, loss, values)
  ball = _Ball(rho, p, num_steps, 2 * rho if step_size is None else step_size, random_init)
  best, values = _worst(objective, scale, key, ball)
  return Sharpness(best - loss, jnp.full((), jnp.nan, loss.dtype), loss, values - loss)


@with_precision
def epsilon_sharpness(
  loss_fn: LossFn,
  params: Params,
  key: jax.Array,
  epsilon: float = 1e-3,
  num_steps: int = 20,
  step_size: float | None = None,
  random_init: bool = False,
  ignore: Sequence[str] = (),
  block: Block | None = None,
) -> Sharpness:
  """Keskar et al. (2017)'s sharpness, their metric (3) with A = I (the full space):

    100 (max over |delta_i| <= epsilon (|w_i| + 1) of L(w + delta) - L(w)) / (1 + L(w)).

  The box is adaptive sharpness's p=inf ball with T = |w| + 1 and rho = epsilon, and the
  maximum is found by the same ascent (``num_steps`` sign-gradient steps from w or,
  ``random_init``, from a uniform point of the box; Keskar et al. used L-BFGS-B): a
  lower bound. ``.sharpness`` and ``.values`` are in these units (percent of 1 + L(w)),
  ``.loss`` is L(w). They used epsilon 1e-3 and 5e-4. ``ignore`` / ``block``: as in
  ``adaptive_sharpness``.
  """
  if not epsilon > 0 or num_steps < 1:
    raise ValueError(f'need epsilon > 0 and num_steps >= 1, got {epsilon}, {num_steps}')
  loss_fn, params = _prepare(loss_fn, params, block)
  scale = _scale(params, 1.0, ignore)
  objective = _objective(loss_fn, params, scale)
  loss = objective(jax.tree.map(jnp.zeros_like, params))
  ball = _Ball(
    epsilon, float('inf'), num_steps, 2 * epsilon if step_size is None else step_size, random_init
  )
  best, values = _worst(objective, scale, key, ball)
  percent = 100.0 / (1.0 + loss)
  return Sharpness(
    (best - loss) * percent, jnp.full((), jnp.nan, loss.dtype), loss, (values - loss) * percent
  )
