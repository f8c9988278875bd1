"""Any model's convolutions in a form XLA:CPU runs fast inside loops, for the probes.

XLA:CPU hands a convolution to its fast library only after its ConvCanonicalization pass
has rewritten it, and that pass visits the entry computation alone (jaxlib 0.10.2,
upstream jax#12868). Every probe that multiplies by the Hessian many times runs the
model's gradient inside a loop body (Lanczos, Hutchinson, lax.map), so the backward
convolutions of a user's conv net run there as naive loops: a foreign Flax VGG-11's top
eigenvalue took over 20 minutes where PyHessian took 21 s. Channels-last convolutions
(already canonical), slices, pads and matmuls have no such pathology.

``convolutions_for_loops(fn)`` therefore re-traces ``fn`` to a jaxpr and evaluates it
with every ``conv_general_dilated`` replaced by ``conv_for_loops``: the same convolution
in channels-last layout, with a custom VJP whose weight gradient is one matmul over an
im2col and whose input gradient is a channels-last convolution (or the patches'
transpose). Its rules are plain JAX, so HVPs differentiate them again. It descends into
jit, remat, scan, while and cond bodies. The probes apply it on the CPU backend only
(``for_loops``); GPU and TPU keep XLA's convolution. JAX has no public rewrite of this
kind, hence our own interpreter (the pattern of JAX's "Writing custom interpreters").
"""

import functools
import itertools
import math
import weakref
from typing import Any, Callable, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnjax.probes._common import assumed_backend

_CONV = jex.primitives.conv_general_dilated_p


def convolutions_for_loops(fn: Callable) -> Callable:
  """``fn`` with every convolution replaced by ``conv_for_loops``: same values and pytrees.

  fn takes and returns pytrees of arrays; its derivatives of any order are those of the
  original up to float rounding (the sums run in another order). Convolutions with
  ``batch_group_count > 1`` (which only gradients create) are left to XLA.
  """

  @functools.wraps(fn)
  def wrapped(*args):
    # Evaluating the jaxpr, not calling fn again, keeps to one Python trace of the model.
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return wrapped


def for_loops(fn: Callable) -> Callable:
  """What the probes differentiate inside loops: ``convolutions_for_loops(fn)`` on the
  CPU backend, ``fn`` itself on GPU and TPU."""
  return convolutions_for_loops(fn) if assumed_backend() == 'cpu' else fn


def has_convolutions(fn: Callable, *args) -> bool:
  """Whether ``fn(*args)`` runs a convolution (traced once to a jaxpr; nested jaxprs of
  jit, remat, scan, while and cond bodies included)."""
  return _has_conv(jax.make_jaxpr(fn)(*args).jaxpr)


def _has_conv(jaxpr: jex.Jaxpr) -> bool:
  return any(
    eqn.primitive is _CONV or any(_has_conv(j) for j in jex.jaxprs_in_params(eqn.params))
    for eqn in jaxpr.eqns
  )


def _eval(jaxpr: jex.Jaxpr, consts, *args) -> list:
  """Evaluates ``jaxpr`` on ``args``, convolutions rewritten; returns its outputs."""
  env = {}
  read = lambda v: v.val if isinstance(v, jex.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is _CONV and eqn.params['batch_group_count'] == 1:
      outvals = [conv_for_loops(*invals, **eqn.params)]
    else:
      params = eqn.params
      if any(_has_conv(j) for j in jex.jaxprs_in_params(params)):
        params = {name: _rewrite_param(value) for name, value in params.items()}
      with eqn.ctx.manager:
        outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
    env.update(zip(eqn.outvars, outvals))
  return [read(v) for v in jaxpr.outvars]


def _rewrite_param(value):
  """A sub-jaxpr parameter (jit, remat, scan, while, cond) with its convolutions rewritten."""
  if isinstance(value, tuple):
    return tuple(_rewrite_param(v) for v in value)
  if isinstance(value, jex.ClosedJaxpr):
    if value.consts:
      return _retrace(value.jaxpr, value.consts)
    # Rewritten once per jaxpr (and matmul precision, which a rewrite's matmuls inherit)
    by_precision = _REWRITTEN.setdefault(value, {})
    precision = jax.config.jax_default_matmul_precision
    if precision not in by_precision:
      by_precision[precision] = _retrace(value.jaxpr, [])
    return by_precision[precision]
  if isinstance(value, jex.Jaxpr) and not value.constvars:
    new = _retrace(value, [])
    return new.jaxpr if not new.consts else value  # an open jaxpr cannot take new consts
  return value


# The rewrites of each const-free sub-jaxpr, by matmul precision. JAX caches the
# derivatives of a jitted function's jaxpr by identity, so the probes that rewrite the same
# jitted loss (objective.make_objective) share one gradient and one HVP trace of it.
_REWRITTEN: 'weakref.WeakKeyDictionary[jex.ClosedJaxpr, dict]' = weakref.WeakKeyDictionary()


def _retrace(jaxpr: jex.Jaxpr, consts) -> jex.ClosedJaxpr:
  avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in jaxpr.invars]
  return jax.make_jaxpr(lambda *xs: _eval(jaxpr, consts, *xs))(*avals)


class _Conv(NamedTuple):
  """A convolution's static parameters, for inputs in canonical layout.

  x [N, *S, C], w [*K, C/G, O], y [N, *S', O] (channels last; O group-major).
  """

  window_strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  groups: int
  precision: Any
  preferred_element_type: Any

  def xla(self, x, w, **changes):
    """XLA's convolution in canonical layout (the form XLA:CPU runs fast anywhere)."""
    nsp = x.ndim - 2
    c = self._replace(**changes)
    spatial = tuple(range(1, nsp + 1))
    dims = lax.ConvDimensionNumbers(
      (0, nsp + 1, *spatial), (nsp + 1, nsp, *range(nsp)), (0, nsp + 1, *spatial)
    )
    return lax.conv_general_dilated(
      x,
      w,
      c.window_strides,
      c.padding,
      c.lhs_dilation,
      c.rhs_dilation,
      dims,
      feature_group_count=c.groups,
      precision=c.precision,
      preferred_element_type=c.preferred_element_type,
    )

  def patches(self, x, window):
    """[N, *S', K * C]: the input under each window offset (offset-major, then channel)."""
    zero = jnp.zeros((), x.dtype)
    x = lax.pad(
      x,
      zero,
      [
        (0, 0, 0),
        *[(lo, hi, d - 1) for (lo, hi), d in zip(self.padding, self.lhs_dilation)],
        (0, 0, 0),
      ],
    )
    nsp = len(window)
    out = [
      (x.shape[1 + i] - (window[i] - 1) * self.rhs_dilation[i] - 1) // self.window_strides[i] + 1
      for i in range(nsp)
    ]
    views = []
    for offset in itertools.product(*map(range, window)):
      start = [0, *[o * d for o, d in zip(offset, self.rhs_dilation)], 0]
      limit = [
        x.shape[0],
        *[b + (n - 1) * st + 1 for b, n, st in zip(start[1:-1], out, self.window_strides)],
        x.shape[-1],
      ]
      views.append(lax.slice(x, start, limit, (1, *self.window_strides, 1)))
    return jnp.concatenate(views, axis=-1)

  def as_matmul(self, x, w):
    """The convolution as patches @ kernel (grouped: one batched dot_general)."""
    nsp = x.ndim - 2
    k, g = math.prod(w.shape[:nsp]), self.groups
    c_in, c_out = w.shape[-2], w.shape[-1]  # c_in per group
    p = self.patches(x, w.shape[:nsp])
    dot = functools.partial(
      lax.dot_general, precision=self.precision, preferred_element_type=self.preferred_element_type
    )
    if g == 1:  # [N, *S', K C] @ [K C, O]
      return dot(p, w.reshape(k * c_in, c_out), (((nsp + 1,), (0,)), ((), ())))
    p = p.reshape(*p.shape[:-1], k, g, c_in)
    y = dot(
      p, w.reshape(k, c_in, g, c_out // g), (((nsp + 1, nsp + 3), (0, 1)), ((nsp + 2,), (2,)))
    )
    return jnp.moveaxis(y, 0, -2).reshape(*y.shape[1:-1], c_out)  # [N, *S', O]

  def weight_gradient(self, x, ct, window):
    """dL/dw = patches(x)^T ct: one matmul over N * S' (XLA:CPU's own runs far slower)."""
    nsp = x.ndim - 2
    k, g = math.prod(window), self.groups
    p = self.patches(x, window)  # [N, *S', K G c]
    c_in, c_out = p.shape[-1] // (k * g), ct.shape[-1]
    batch_axes = tuple(range(nsp + 1))
    dot = functools.partial(lax.dot_general, precision=self.precision)
    if g == 1:
      dw = dot(p, ct, ((batch_axes, batch_axes), ((), ())))  # [K C, O]
      return dw.reshape(*window, c_in, c_out)
    p = p.reshape(*p.shape[:-1], k, g, c_in)
    ct = ct.reshape(*ct.shape[:-1], g, c_out // g)
    dw = dot(p, ct, ((batch_axes, batch_axes), ((nsp + 2,), (nsp + 1,))))  # [G, K, c, O/G]
    return jnp.moveaxis(dw, 0, 2).reshape(*window, c_in, c_out)

  def input_gradient(self, x, w, ct):
    """dL/dx: for stride 1, a canonical convolution of ct with the flipped, transposed
    kernel; otherwise the transpose of the patches (pads and adds)."""
    nsp = x.ndim - 2
    if (
      self.groups == 1
      and set(self.window_strides) == {1}
      and set(self.lhs_dilation) == {1}
      and _xla_is_fast(x.shape)
    ):
      reach = [(k - 1) * d for k, d in zip(w.shape[:nsp], self.rhs_dilation)]
      flipped = jnp.swapaxes(jnp.flip(w, tuple(range(nsp))), -1, -2)  # [*K, O, C]
      return self.xla(
        ct,
        flipped,
        padding=tuple((r - lo, r - hi) for r, (lo, hi) in zip(reach, self.padding)),
        preferred_element_type=None,
      )
    return jax.vjp(lambda x: self.as_matmul(x, w), x)[1](ct.astype(x.dtype))[0]


def _xla_is_fast(shape) -> bool:
  # XLA:CPU's 3x3 convolution on a 2x2 input runs far below its usual speed (see
  # models/common.py); shifted slices + matmul win there.
  return math.prod(shape[1:-1]) > CPU_MATMUL_MAX_PIXELS


CPU_MATMUL_MAX_PIXELS = 4


def _forward(x, w, conv: _Conv):
  if conv.groups == 1 and set(conv.lhs_dilation) == {1} and _xla_is_fast(x.shape):
    return conv.xla(x, w)
  return conv.as_matmul(x, w)


# The VJP is ours; its rule is plain JAX, so forward-over-reverse HVPs differentiate it.
_conv = jax.custom_vjp(_forward, nondiff_argnums=(2,))


def _conv_fwd(x, w, conv):
  return _forward(x, w, conv), (x, w)


def _conv_bwd(conv, residuals, ct):
  x, w = residuals
  dx = conv.input_gradient(x, w, ct)
  dw = conv.weight_gradient(x, ct, w.shape[: x.ndim - 2])
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_for_loops(
  lhs,
  rhs,
  *,
  window_strides,
  padding,
  lhs_dilation,
  rhs_dilation,
  dimension_numbers,
  feature_group_count,
  precision=None,
  preferred_element_type=None,
  **unused,
):
  """``lax.conv_general_dilated``'s value and derivatives (any order), computed only by
  canonical-layout convolutions, slices and matmuls, all fast inside XLA:CPU loops.

  Takes the primitive's parameters (``dimension_numbers`` a ConvDimensionNumbers of
  index tuples). Forward: XLA's convolution in channels-last layout (slices + matmul on
  inputs of at most ``CPU_MATMUL_MAX_PIXELS`` pixels, with input dilation or groups).
  Backward (a custom VJP): the weight gradient as one matmul over an im2col of the
  input (memory: prod(window) times the input's); the input gradient as a canonical
  convolution with the flipped kernel (stride 1) or the patches' transpose.
  """
  del unused  # batch_group_count (1 here), out_sharding
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # [N, *S, C]
  w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # [*K, C/G, O]
  conv = _Conv(
    tuple(window_strides),
    tuple(map(tuple, padding)),
    tuple(lhs_dilation),
    tuple(rhs_dilation),
    feature_group_count,
    precision,
    preferred_element_type,
  )
  y = _conv(x, w, conv)  # [N, *S', O]
  perm = np.empty(y.ndim, int)
  perm[out_spec[0]], perm[out_spec[1]] = 0, y.ndim - 1
  for i, d in enumerate(out_spec[2:]):
    perm[d] = 1 + i
  return jnp.transpose(y, perm)
