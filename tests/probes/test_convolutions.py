"""probes.convolutions_for_loops: the same values, gradients and HVPs as XLA's convolution,
with only convolutions XLA:CPU runs fast inside loops."""

import flax.linen as nn
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnjax import probes
from bnjax.probes import convolutions
from bnjax.probes._common import tree_norm

# (lhs shape, rhs shape, conv_general_dilated keywords)
CASES = {
  '2d same': (
    (2, 5, 6, 3),
    (3, 3, 3, 4),
    dict(window_strides=(1, 1), padding='SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
  ),
  '2d strided nchw': (
    (2, 3, 7, 6),
    (4, 3, 3, 2),
    dict(
      window_strides=(2, 1), padding=((1, 0), (2, 1)), dimension_numbers=('NCHW', 'OIHW', 'NCHW')
    ),
  ),
  '2d dilated valid': (
    (1, 9, 8, 2),
    (3, 2, 2, 5),
    dict(
      window_strides=(1, 2),
      padding='VALID',
      rhs_dilation=(2, 3),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    ),
  ),
  '2d transposed (lhs dilation)': (
    (2, 4, 4, 3),
    (3, 3, 3, 2),
    dict(
      window_strides=(1, 1),
      padding=((2, 1), (1, 2)),
      lhs_dilation=(2, 2),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    ),
  ),
  '2d negative padding': (
    (1, 6, 6, 2),
    (2, 2, 2, 3),
    dict(
      window_strides=(1, 1), padding=((-1, 0), (0, -1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    ),
  ),
  '2d grouped': (
    (2, 5, 5, 6),
    (3, 3, 2, 9),
    dict(
      window_strides=(1, 1),
      padding='SAME',
      feature_group_count=3,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    ),
  ),
  '2d odd layout': (
    (5, 2, 3, 6),
    (3, 4, 3, 3),
    dict(window_strides=(1, 1), padding='SAME', dimension_numbers=('HNCW', 'HOWI', 'CWNH')),
  ),
  '1d': (
    (2, 10, 3),
    (4, 3, 2),
    dict(window_strides=(3,), padding=((2, 1),), dimension_numbers=('NWC', 'WIO', 'NWC')),
  ),
  '3d': (
    (1, 4, 5, 3, 2),
    (2, 3, 2, 2, 3),
    dict(window_strides=(1, 1, 1), padding='SAME', dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC')),
  ),
}


def _convolutions(jaxpr):
  """Every conv_general_dilated equation in a closed jaxpr, sub-jaxprs included."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      yield eqn
    for sub in jex.jaxprs_in_params(eqn.params):
      yield from _convolutions(sub)


def assert_only_canonical_convolutions(jaxpr):
  """Channels-last input and output, kernel [*window, in, out]: the layout XLA:CPU runs
  fast inside loops (its ConvCanonicalization pass never visits loop bodies)."""
  for eqn in _convolutions(jaxpr):
    lhs, rhs, out = eqn.params['dimension_numbers']
    n = len(lhs) - 2
    assert lhs == out == (0, n + 1, *range(1, n + 1)), eqn
    assert rhs == (n + 1, n, *range(n)), eqn
    assert eqn.params['batch_group_count'] == 1, eqn


def _conv_loss(kw):
  def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, **kw)
    return jnp.sum(jnp.tanh(y) ** 2)

  return loss


@pytest.mark.parametrize('name', sorted(CASES))
def test_primitive_value_gradient_and_hvp_match(name):
  lhs_shape, rhs_shape, kw = CASES[name]
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, lhs_shape)
  w = jax.random.normal(k2, rhs_shape) * 0.3
  v = jax.random.normal(k3, rhs_shape)
  loss = _conv_loss(kw)
  fast = convolutions.convolutions_for_loops(loss)
  with jax.default_matmul_precision('highest'):
    out_plain = jax.lax.conv_general_dilated(x, w, **kw)
    out_fast = convolutions.convolutions_for_loops(
      lambda w, x: jax.lax.conv_general_dilated(x, w, **kw)
    )(w, x)
    np.testing.assert_allclose(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    assert_only_canonical_convolutions(jax.make_jaxpr(fast)(w, x))
    g_plain, g_fast = jax.grad(loss)(w, x), jax.jit(jax.grad(fast))(w, x)
    np.testing.assert_allclose(g_fast, g_plain, rtol=1e-4, atol=1e-5)
    h_plain = jax.jvp(jax.grad(lambda w: loss(w, x)), (w,), (v,))[1]
    h_fast = jax.jvp(jax.grad(lambda w: fast(w, x)), (w,), (v,))[1]
    np.testing.assert_allclose(h_fast, h_plain, rtol=1e-4, atol=1e-4)
    assert_only_canonical_convolutions(jax.make_jaxpr(jax.grad(fast))(w, x))
    hvp_jaxpr = jax.make_jaxpr(lambda w, v: jax.linearize(jax.grad(lambda w: fast(w, x)), w)[1](v))
    assert_only_canonical_convolutions(hvp_jaxpr(w, v))


def test_descends_into_jit_scan_and_cond_and_keeps_custom_jvp():
  kw = CASES['2d same'][2]
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, **kw))

  def loss(w, x):
    def body(h, _):
      h = jax.lax.cond(h.sum() > 1e9, lambda h: h, lambda h: jax.nn.relu(conv(h, w)), h)
      return h, h.mean()

    h, means = jax.lax.scan(body, x, None, length=2)
    return jnp.sum(h**2) + means.sum()

  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 3)) * 0.4
  fast = convolutions.convolutions_for_loops(loss)
  with pytest.raises(AssertionError):
    assert_only_canonical_convolutions(jax.make_jaxpr(jax.grad(loss))(w, x))
  assert_only_canonical_convolutions(jax.make_jaxpr(jax.grad(fast))(w, x))
  assert 'custom_jvp_call' in str(jax.make_jaxpr(fast)(w, x))  # relu's rule kept
  with jax.default_matmul_precision('highest'):
    np.testing.assert_allclose(fast(w, x), loss(w, x), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fast)(w, x), jax.grad(loss)(w, x), rtol=1e-4, atol=1e-5)


def test_function_without_convolutions_gives_the_same_values():
  f = lambda p: {'a': jnp.sin(p['w']).sum(), 'b': p['w'] * 2}
  p = {'w': jnp.arange(3.0)}
  out = convolutions.convolutions_for_loops(f)(p)
  assert out['a'] == f(p)['a'] and (out['b'] == f(p)['b']).all()


class _LinenConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(4, (3, 3), strides=(2, 2))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = nn.Conv(6, (3, 3), feature_group_count=2, padding='VALID')(x)
    return nn.Dense(3)(x.mean((1, 2)))


def _linen_loss():
  model = _LinenConvBN()
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 3))
  y = jnp.arange(8) % 3
  variables = model.init(jax.random.key(1), x, train=False)

  def loss_fn(params):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])

  return loss_fn, variables['params']


def test_probes_on_a_linen_conv_net_match_the_dense_hessian():
  """The probes' Lanczos (rewritten on CPU) against the dense Hessian of the plain loss."""
  loss_fn, params = _linen_loss()
  assert jax.default_backend() == 'cpu'
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  with jax.default_matmul_precision('highest'):
    dense = jax.hessian(lambda f: loss_fn(unravel(f)))(flat)
  top = np.linalg.eigvalsh(np.asarray(dense, np.float64))[::-1][:2]
  pairs = jax.jit(lambda p, k: probes.top_eigenvalues(loss_fn, p, k, k=2, tol=1e-5))(
    params, jax.random.key(3)
  )
  np.testing.assert_allclose(pairs.eigenvalues, top, rtol=1e-4)
  v = jax.random.normal(jax.random.key(4), (3, flat.size))
  products = jax.jit(
    lambda p, vs: jax.lax.map(
      lambda u: jax.flatten_util.ravel_pytree(probes.hvp_operator(loss_fn, p)(unravel(u)))[0], vs
    )
  )(params, v)  # the operator's products in a loop, as every many-product probe runs them
  np.testing.assert_allclose(products, v @ np.asarray(dense), rtol=1e-4, atol=1e-5)


def test_many_product_probes_loop_only_over_loop_safe_convolutions_hessian_and_ggn():
  """Every convolution the probes' compiled loops hold (Hessian and GGN) is channels-last."""
  model = _LinenConvBN()
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 3))
  y = jnp.arange(4) % 3
  variables = model.init(jax.random.key(1), x, train=False)
  outputs_fn = lambda p: model.apply(
    {'params': p, 'batch_stats': variables['batch_stats']}, x, train=True, mutable=['batch_stats']
  )[0]
  split = probes.SplitLoss(outputs_fn, lambda o: -jnp.mean(jax.nn.log_softmax(o)[jnp.arange(4), y]))
  for operator in ('hessian', 'ggn'):
    assert_only_canonical_convolutions(
      jax.make_jaxpr(
        lambda p: probes.top_eigenvalues(
          split, p, jax.random.key(2), operator=operator, max_iterations=4
        )
      )(variables['params'])
    )
    assert_only_canonical_convolutions(
      jax.make_jaxpr(
        lambda p: probes.hessian_trace(
          split, p, jax.random.key(2), num_samples=2, operator=operator
        )
      )(variables['params'])
    )


def test_nnx_and_plain_models_are_rewritten_too():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x):
      return jnp.sum(jnp.tanh(self.bn(self.conv(x))) ** 2)

  graphdef, params, stats = nnx.split(Net(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  loss_fn = lambda p: nnx.merge(graphdef, p, stats, copy=True)(x)
  fast = convolutions.convolutions_for_loops(loss_fn)
  with pytest.raises(AssertionError):
    assert_only_canonical_convolutions(jax.make_jaxpr(jax.grad(loss_fn))(params))
  assert_only_canonical_convolutions(jax.make_jaxpr(jax.grad(fast))(params))
  v = jax.tree.map(jnp.ones_like, params)
  with jax.default_matmul_precision('highest'):
    h_fast = jax.jvp(jax.grad(fast), (params,), (v,))[1]
    h_plain = jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]
  err = tree_norm(jax.tree.map(jnp.subtract, h_fast, h_plain)) / tree_norm(h_plain)
  assert err < 1e-5
