"""ics.py: internal covariate shift against the closed form of a two-layer linear model."""

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import probes


def test_ics_on_a_two_layer_linear_model_matches_the_closed_form():
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((4, 32)), rng.standard_normal((3, 32))
  w1, w2 = rng.standard_normal((5, 4)), rng.standard_normal((3, 5))
  w1_new, w2_new = w1 + 0.1 * rng.standard_normal((5, 4)), w2 + 0.1 * rng.standard_normal((3, 5))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  loss_fn = lambda p: 0.5 * jnp.sum((p['l2']['w'] @ p['l1']['w'] @ f32(x) - f32(y)) ** 2)
  params = {'l1': {'w': f32(w1)}, 'l2': {'w': f32(w2)}}
  new = {'l1': {'w': f32(w1_new)}, 'l2': {'w': f32(w2_new)}}
  r = jax.jit(lambda p, q: probes.ics(loss_fn, p, q, [('l1',), ('l2', 'w')]))(params, new)
  g2 = (w2 @ w1 @ x - y) @ (w1 @ x).T  # G_2 at theta_t
  g2_shift = (w2 @ w1_new @ x - y) @ (w1_new @ x).T  # layer 1 updated, layer 2 not
  cos = np.sum(g2 * g2_shift) / np.linalg.norm(g2) / np.linalg.norm(g2_shift)
  np.testing.assert_allclose(r.l2, [0.0, np.linalg.norm(g2 - g2_shift)], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(r.cosine, [1.0, cos], rtol=1e-5)
  g1 = w2.T @ (w2 @ w1 @ x - y) @ x.T  # G_1 at theta_t
  np.testing.assert_allclose(r.grad_norm, [np.linalg.norm(g1), np.linalg.norm(g2)], rtol=1e-5)
  given = probes.ics(
    loss_fn, params, new, [('l1',), ('l2', 'w')], gradient=jax.grad(loss_fn)(params)
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), r, given)
