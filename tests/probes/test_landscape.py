"""landscape.py: the loss landscape along the gradient on a quadratic, NaN safety, and
where the step sizes are vmapped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import probes
from bnjax.probes import _common


def test_gradient_landscape_on_a_quadratic(quadratic):
  loss_fn, params, a = quadratic
  x = np.asarray(params['x'], np.float64)
  g = a @ x
  etas = np.array([0.01, 0.05, 0.1, 0.3])
  r = jax.jit(lambda p, e: probes.gradient_landscape(loss_fn, p, e))(params, jnp.asarray(etas))
  np.testing.assert_allclose(r.grad_diff, etas * np.linalg.norm(a @ g), rtol=1e-4)
  np.testing.assert_allclose(r.beta, np.linalg.norm(a @ g) / np.linalg.norm(g), rtol=1e-4)
  expected_loss = [0.5 * (x - e * g) @ a @ (x - e * g) for e in etas]
  np.testing.assert_allclose(r.loss, expected_loss, rtol=1e-4)
  assert r.loss_at_start == pytest.approx(0.5 * x @ a @ x, rel=1e-5)
  assert r.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-5)
  # Vmapped all at once, or with the gradient supplied: the same numbers.
  for kwargs in (
    {'batch_size': 4},
    {'batch_size': 1},
    {'batch_size': 0},
    {'gradient': {'x': jnp.asarray(g, jnp.float32)}},
    {'gradient': {'x': jnp.asarray(g, jnp.float32)}, 'loss_at_start': jnp.float32(0.5 * x @ a @ x)},
  ):
    other = probes.gradient_landscape(loss_fn, params, jnp.asarray(etas), **kwargs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), r, other)
  curv = probes.directional_curvature(loss_fn, params, {'x': jnp.asarray(g, jnp.float32)})
  assert curv == pytest.approx(g @ a @ g / (g @ g), rel=1e-5)


def test_landscape_is_nan_safe(quadratic):
  loss_fn, params, _ = quadratic
  # At a minimum the gradient is zero: beta is undefined and reported as NaN.
  r = probes.gradient_landscape(loss_fn, {'x': jnp.zeros(20)}, jnp.array([0.1, 0.2]))
  assert r.grad_norm == 0 and np.isnan(r.beta)
  np.testing.assert_array_equal(r.loss, [0.0, 0.0])
  # A step size that leaves the finite region: NaN there, beta from the finite ones.
  blowup = lambda p: jnp.where(jnp.abs(p['x']).max() > 50.0, jnp.nan, loss_fn(p))
  etas = jnp.array([0.01, 1e4])
  r = probes.gradient_landscape(blowup, params, etas)
  assert np.isfinite(r.loss[0]) and np.isnan(r.loss[1])
  reference = probes.gradient_landscape(loss_fn, params, etas[:1])
  assert r.beta == pytest.approx(float(reference.beta), rel=1e-5)


def test_on_cpu_only_a_loss_with_convolutions_unrolls_its_step_sizes(monkeypatch):
  monkeypatch.delenv(_common.ASSUME_BACKEND, raising=False)
  x = jnp.ones((2, 3, 6, 6))
  conv = lambda w: jnp.sum(jax.lax.conv(x, w, (1, 1), 'SAME') ** 2)
  in_a_loop = lambda w: jax.lax.fori_loop(0, 2, lambda i, s: s + jax.jit(conv)(w), 0.0)
  dense = lambda v: jnp.sum((x.reshape(2, -1) @ v) ** 2)
  w = jnp.ones((4, 3, 3, 3))
  default = probes.landscape.default_batch_size
  assert default(5, conv, w) == 0 and default(5, in_a_loop, w) == 0
  assert default(5, dense, jnp.ones((108, 4))) == 5
  monkeypatch.setenv(_common.ASSUME_BACKEND, 'tpu')
  assert default(5, conv, w) == 5
