"""Model shapes, layer numbering and activation exposure."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import models
from bnjax.models import common


def _init(model, x):
  return model.init({'params': jax.random.key(0), 'noise': jax.random.key(1)}, x, train=False)


def test_vgg16_has_the_papers_13_conv_layers_and_exposes_them():
  model = models.get_model('vgg16', 'batch')
  shapes = jax.eval_shape(lambda x: _init(model, x), jnp.zeros((2, 32, 32, 3)))
  assert models.num_layers(model) == 13
  convs = [k for k in shapes['params'] if k.startswith('conv')]
  assert len(convs) == 13 and shapes['params']['conv13']['kernel'].shape == (3, 3, 512, 512)
  assert shapes['params']['head']['kernel'].shape == (512, 10)
  for k in (1, 13):
    assert f'conv{k}_out' in shapes['perturbations'] and f'norm{k}_out' in shapes['perturbations']
  assert models.kernel_path(model, 5) == ('conv5', 'kernel')
  with pytest.raises(ValueError, match='layers 1..13'):
    models.kernel_path(model, 14)
  assert models.num_layers(models.get_model('vgg11', 'none')) == 8


def test_dln_is_25_bias_free_10x10_layers():
  model = models.get_model('dln', 'batch')
  v = _init(model, jnp.zeros((4, 10)))
  kernels = {k: p['kernel'].shape for k, p in v['params'].items() if k.startswith('dense')}
  assert len(kernels) == 25 and set(kernels.values()) == {(10, 10)}
  assert all(set(p) == {'kernel'} for k, p in v['params'].items() if k.startswith('dense'))
  assert len(v['batch_stats']) == 24  # BN after layers 1..24
  # Without a normaliser it is exactly the product of its matrices.
  plain = models.get_model('dln', 'none')
  v = _init(plain, jnp.zeros((4, 10)))
  x = jax.random.normal(jax.random.key(2), (4, 10))
  w = x
  for k in range(1, 26):
    w = w @ v['params'][f'dense{k}']['kernel']
  out = plain.apply(v, x, train=True)
  assert jnp.allclose(out, w, rtol=1e-4, atol=1e-6)


def test_unknown_model_lists_names():
  with pytest.raises(ValueError, match="unknown model 'resnet'.*vgg16.*dln"):
    models.get_model('resnet')


def test_intermediates_are_sown_in_training_mode():
  model = models.get_model('mlp', 'batch', hidden=(6, 5))
  x = jnp.ones((4, 3))
  v = _init(model, x)
  _, st = model.apply(
    {'params': v['params'], 'batch_stats': v['batch_stats']},
    x,
    train=True,
    mutable=['intermediates', 'batch_stats'],
  )
  z = st['intermediates']['norm2_out'][0]
  assert z.shape == (4, 5)
  assert jnp.allclose(z.mean(0), 0, atol=1e-5)  # BN output, before the ReLU


@pytest.mark.parametrize('hw', [(1, 1), (2, 2), (2, 1), (1, 3), (4, 4)])
def test_im2col_convolution_equals_xla_convolution(hw, monkeypatch):
  """XLA's convolution and im2col agree in value, gradient and Hessian-vector product."""
  x = jax.random.normal(jax.random.key(0), (3, *hw, 5))
  conv = common.Conv3x3(4)
  params = conv.init(jax.random.key(1), x)
  f = lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x)))
  grad = jax.grad(f, argnums=(0, 1))
  tangent = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size).reshape(a.shape)), (params, x))
  results = []
  for pixels in (0, 10**6):  # XLA's convolution, then im2col, for every size
    monkeypatch.setattr(common, 'CPU_IM2COL_MAX_PIXELS', pixels)
    assert common.use_im2col(*hw) == (pixels > 0)
    hvp = jax.jvp(lambda p, x: grad(p, x), (params, x), tangent)[1]
    results.append((conv.apply(params, x), grad(params, x), hvp))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)
  assert not common.use_im2col(2, 2, backend='tpu') and not common.use_im2col(2, 2, backend='gpu')


def test_max_pool_2x2_equals_flax_max_pool_in_value_gradient_and_hvp():
  """Values, gradients and Hessian-vector products of the elementwise-maxima pool equal
  those of ``nn.max_pool`` (reduce-window); the ReLU before it makes ties at 0."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 6, 3))
  v = jax.random.normal(jax.random.key(1), x.shape)
  pools = (common.max_pool_2x2, lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
  results = []
  for pool in pools:
    f = lambda x: jnp.sum(jnp.sin(3 * pool(jax.nn.relu(x))))
    hvp = jax.jvp(jax.grad(f), (x,), (v,))[1]
    results.append((pool(x), jax.grad(f)(x), hvp))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), *results)
  assert float(jnp.abs(results[0][2]).max()) > 0.1  # the HVP is not trivially zero
  with pytest.raises(ValueError, match='even'):
    common.max_pool_2x2(x[:, :7])


def test_materialized_is_the_identity_in_value_jvp_gradient_and_hvp(monkeypatch):
  """``common.materialized`` (x / (1 + 0 x) on CPU, so that XLA stores x once) returns x
  bitwise and has the identity's derivatives; a VGG with BatchNorm has the same loss,
  gradient and HVP with it as with a plain identity in its place."""
  x = jnp.concatenate(
    [jnp.array([0.0, -0.0, 1e30, -1e-30]), 1e3 * jax.random.normal(jax.random.key(0), (60,))]
  )
  v = jax.random.normal(jax.random.key(1), x.shape)
  bits = lambda a: np.asarray(a).view(np.int32)
  np.testing.assert_array_equal(bits(jax.jit(common.materialized)(x)), bits(x))
  np.testing.assert_array_equal(jax.jvp(common.materialized, (x,), (v,))[1], v)

  def grad_and_hvp(f):
    return jax.jit(lambda x: (jax.grad(f)(x), jax.jvp(jax.grad(f), (x,), (v,))[1]))(x)

  wrapped = grad_and_hvp(lambda x: jnp.sum(jnp.sin(common.materialized(x)) * x))
  plain = grad_and_hvp(lambda x: jnp.sum(jnp.sin(x) * x))
  jax.tree.map(np.testing.assert_array_equal, wrapped, plain)

  model = models.get_model('vgg_tiny', 'batch')
  images = jax.random.normal(jax.random.key(2), (8, 32, 32, 3))
  params = _init(model, images)['params']
  tangent = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)

  def loss_grad_hvp(params):
    loss = lambda p: jnp.sum(
      jnp.sin(
        model.apply({'params': p, 'batch_stats': {}}, images, train=True, mutable=['batch_stats'])[
          0
        ]
      )
    )
    return (loss(params), jax.grad(loss)(params), jax.jvp(jax.grad(loss), (params,), (tangent,))[1])

  results = [jax.jit(loss_grad_hvp)(params)]
  monkeypatch.setattr(common, 'materialized', lambda x: x)
  results.append(jax.jit(loss_grad_hvp)(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)


def test_for_control_flow_model_is_the_same_function_in_loops():
  """The control-flow model (im2col convs on CPU) gives the same loss and gradient,
  including inside a lax.fori_loop body, as the model outside any loop."""
  model = models.get_model('vgg_tiny', 'batch')
  loop_model = models.for_control_flow(model)
  assert loop_model.conv_impl == ('im2col' if jax.default_backend() == 'cpu' else 'auto')
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  params = _init(model, x)['params']

  def loss(m):
    return lambda p: jnp.sum(m.apply({'params': p}, x, train=True, mutable=['batch_stats'])[0] ** 2)

  expected = jax.value_and_grad(loss(model))(params)
  zero = jax.tree.map(jnp.zeros_like, expected)
  in_loop = jax.jit(
    lambda p: jax.lax.fori_loop(0, 1, lambda i, _: jax.value_and_grad(loss(loop_model))(p), zero)
  )(params)
  # Conv biases before BN have zero gradient up to rounding: tolerance on the global scale.
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(expected))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), expected, in_loop
  )
  with pytest.raises(ValueError, match='conv_impl'):
    models.get_model('vgg_tiny', 'none', conv_impl='fft').init(jax.random.key(0), x, train=False)
  assert models.for_control_flow(models.get_model('dln', 'batch')).depth == 25


def test_each_model_names_its_layers_through_one_helper():
  """``models.layer`` names what each model creates: its modules, params and exposures."""
  for name, kwargs, x in (
    ('vgg_tiny', {}, jnp.zeros((2, 32, 32, 3))),
    ('mlp', {'hidden': (6, 5)}, jnp.zeros((2, 3))),
    ('dln', {'depth': 3}, jnp.zeros((2, 10))),
  ):
    model = models.get_model(name, 'batch', **kwargs)
    shapes = jax.eval_shape(lambda x, model=model: _init(model, x), x)
    for k in range(1, models.num_layers(model) + 1):
      names = models.layer(model, k)
      assert shapes['params'][names.linear]['kernel'] is not None
      assert models.kernel_path(model, k) == (names.linear, 'kernel')
      if k < models.num_layers(model) or name != 'dln':  # none after the DLN's output layer
        assert {names.linear_out, names.norm_out} <= set(shapes['perturbations'])
        assert names.norm in shapes['params']
  assert models.layer(models.get_model('vgg16', 'none'), 3) == common.Layer(
    'conv3', 'norm3', 'conv3_out', 'norm3_out'
  )


def test_the_registry_gives_num_classes_to_classifiers_only():
  assert models.get_model('mlp', 'none', num_classes=3).num_classes == 3
  assert models.get_model('vgg_tiny', 'none', num_classes=7).num_classes == 7
  assert not hasattr(models.get_model('dln', 'none', num_classes=3), 'num_classes')
  assert set(models.MODELS) == {'vgg11', 'vgg16', 'vgg_tiny', 'dln', 'mlp'}


def test_the_cpu_convolution_threshold_is_one_number_for_models_and_probes():
  """The probe library keeps its own copy (it imports nothing else of bnjax): they agree."""
  from bnjax.probes import convolutions  # pylint: disable=g-import-not-at-top

  assert common.CPU_IM2COL_MAX_PIXELS == convolutions.CPU_MATMUL_MAX_PIXELS
