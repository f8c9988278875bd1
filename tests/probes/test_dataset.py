"""dataset.py: a loss over stacked batches gives the dense Hessian of the full-data loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import models, probes

from .cases import dense_hessian, flat


def test_dataset_loss_gives_the_hessian_of_the_full_data_loss():
  """Batches of 16, 16 and 8 (padded): the operator is the dense Hessian of the loss over
  all 40 examples, and every probe works on it."""
  model = models.get_model('mlp', 'none', hidden=(7,), num_classes=3)
  x = jax.random.normal(jax.random.key(1), (40, 5))
  y = jax.random.randint(jax.random.key(2), (40,), 0, 3)
  params = model.init(jax.random.key(0), x, train=False)['params']
  ce = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(
    model.apply({'params': p}, xb, train=False), yb
  )
  full_loss = lambda p: ce(p, x, y).mean()
  pad = lambda a: jnp.concatenate([a, jnp.zeros((8,) + a.shape[1:], a.dtype)])
  batches = {
    'x': pad(x).reshape(3, 16, 5),
    'y': pad(y).reshape(3, 16),
    'mask': pad(jnp.ones(40)).reshape(3, 16),
  }
  sizes = jnp.asarray([16.0, 16.0, 8.0])

  def batch_loss(p, b):  # the mean over a batch's real examples
    return jnp.sum(ce(p, b['x'], b['y']) * b['mask']) / jnp.sum(b['mask'])

  h = dense_hessian(full_loss, params)

  def probed(p, b, key):
    loss_fn = probes.dataset_loss(batch_loss, b, sizes)
    return (
      loss_fn(p),
      probes.hvp(loss_fn, p, p),
      probes.top_eigenvalues(loss_fn, p, key, k=2, tol=1e-5),
      probes.hessian_trace_hutchpp(loss_fn, p, key, num_products=3 * h.shape[0]),
    )

  loss, hv, eig, trace = jax.jit(probed)(params, batches, jax.random.key(3))
  assert loss == pytest.approx(float(full_loss(params)), rel=1e-6)
  np.testing.assert_allclose(flat(hv), h @ flat(params), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(eig.eigenvalues, np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-4)
  assert float(trace.estimate) == pytest.approx(np.trace(h), rel=1e-4)
  with pytest.raises(TypeError, match='iterator'):
    probes.dataset_loss(batch_loss, iter([batches]))
