"""The code paths only accelerators take, run on this CPU ($BNJAX_ASSUME_BACKEND=tpu):
XLA convolutions everywhere (no im2col), XLA convolutions inside the probes' loops,
activations not stored once, step sizes and surface points vmapped. They compute the
same functions as the CPU paths."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnjax import models, probes
from bnjax.models import common


def _vgg_probes():
  """Loss, gradient, top eigenvalue, landscape and a loss surface of a tiny BN VGG whose
  last convolutions see 2x2 inputs (im2col on the CPU path), traced afresh."""
  model = models.get_model('vgg_tiny', 'batch', num_classes=4)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  y = jnp.arange(8) % 4
  variables = model.init(jax.random.key(1), x, train=False)

  @jax.jit
  def run(params, batch_stats, x, y):
    def loss_fn(p):
      logits, _ = models.for_control_flow(model).apply(
        {'params': p, 'batch_stats': batch_stats}, x, train=True, mutable=['batch_stats']
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    key = jax.random.key(2)
    top = probes.top_eigenvalues(loss_fn, params, key, k=1, num_iterations=6)
    landscape = probes.gradient_landscape(loss_fn, params, jnp.asarray([0.01, 0.1]))
    surface = probes.loss_surface(
      loss_fn, params, probes.random_directions(key, params, 1), jnp.linspace(-0.5, 0.5, 3)
    )
    return jax.value_and_grad(loss_fn)(params), top.eigenvalues, landscape, surface.loss

  return run(variables['params'], variables['batch_stats'], x, y)


def test_accelerator_paths_are_taken_and_compute_the_same_functions(monkeypatch):
  monkeypatch.delenv(common.ASSUME_BACKEND, raising=False)
  cpu = _vgg_probes()
  assert common.use_im2col(2, 2)
  monkeypatch.setenv(common.ASSUME_BACKEND, 'tpu')
  assert not common.use_im2col(2, 2)
  vgg = models.get_model('vgg_tiny', 'batch')
  assert models.for_control_flow(vgg) is vgg
  x = jnp.ones(3)
  assert common.materialized(x) is x
  conv_loss = lambda w: jnp.sum(jax.lax.conv(jnp.ones((1, 1, 4, 4)), w, (1, 1), 'SAME'))
  assert probes.landscape.default_batch_size(4, conv_loss, jnp.ones((1, 1, 3, 3))) == 4
  tpu = _vgg_probes()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), tpu, cpu)
