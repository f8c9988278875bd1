"""operators.py: H v, G v and the operator each many-product probe multiplies by
(``operator=``, ``block=``), against dense Hessians and Gauss-Newton matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bnjax import models, probes
from bnjax.probes import operators

from .cases import dense_hessian, flat, random_like


@pytest.mark.parametrize('fixture', ['mlp', 'convnet', 'dln'])
def test_hvp_equals_dense_hessian_times_v_and_is_symmetric(fixture, request):
  loss_fn, params = request.getfixturevalue(fixture)
  h = request.getfixturevalue(fixture + '_hessian')
  u, v = random_like(jax.random.key(7), params), random_like(jax.random.key(8), params)

  def products(p, v, u):
    apply_h = probes.hvp_operator(loss_fn, p)  # the linearised operator, for many vectors
    return probes.hvp(loss_fn, p, v), probes.hvp(loss_fn, p, u), apply_h(v), apply_h(u)

  hv, hu, hv_op, hu_op = map(flat, jax.jit(products)(params, v, u))
  np.testing.assert_allclose(hv, h @ flat(v), rtol=2e-3, atol=2e-4 * np.abs(h @ flat(v)).max())
  assert abs(flat(u) @ hv - flat(v) @ hu) <= 1e-4 * (abs(flat(u) @ hv) + 1e-3)
  np.testing.assert_allclose(hv_op, h @ flat(v), rtol=2e-3, atol=2e-4 * np.abs(h @ flat(v)).max())
  np.testing.assert_allclose(hu_op, h @ flat(u), rtol=2e-3, atol=2e-4 * np.abs(h @ flat(u)).max())


def test_gnvp_equals_dense_gauss_newton():
  x = jax.random.normal(jax.random.key(1), (16, 6))
  y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
  model = models.get_model('mlp', 'none', hidden=(8,), num_classes=3)
  params = model.init(jax.random.key(0), x, train=False)['params']
  outputs_fn = lambda p: model.apply({'params': p}, x, train=True)
  loss_of_outputs = lambda o: optax.softmax_cross_entropy_with_integer_labels(o, y).mean()
  flat_p, unravel = ravel_pytree(params)
  v = random_like(jax.random.key(3), params)

  def dense_and_probe(flat_p, v):
    out = outputs_fn(unravel(flat_p))
    j = jax.jacfwd(lambda f: outputs_fn(unravel(f)).ravel())(flat_p)
    h_out = jax.hessian(lambda o: loss_of_outputs(o.reshape(out.shape)))(out.ravel())
    return j, h_out, probes.gnvp(outputs_fn, loss_of_outputs, unravel(flat_p), v)

  j, h_out, gv = jax.jit(dense_and_probe)(flat_p, v)
  j, h_out, gv = np.asarray(j, np.float64), np.asarray(h_out, np.float64), flat(gv)
  np.testing.assert_allclose(gv, j.T @ h_out @ j @ flat(v), rtol=1e-3, atol=1e-6)


def test_block_probes_use_the_hessians_diagonal_block(mlp):
  loss_fn, params = mlp
  block_loss, block_params = probes.restrict(loss_fn, params, ('dense2',))
  assert set(block_params) == {'dense2/bias', 'dense2/kernel'}
  h = dense_hessian(block_loss, block_params)
  v = random_like(jax.random.key(1), block_params)

  def block_probes(p, k, v):
    return (
      probes.top_eigenvalues(loss_fn, p, k, k=1, num_iterations=60, block=('dense2',)),
      probes.hessian_trace(
        loss_fn, p, k, num_samples=300, batch_size=50, block=lambda path: path[0] == 'dense2'
      ),
      probes.directional_curvature(loss_fn, p, v, block=('dense2',)),
    )

  r, t, c = jax.jit(block_probes)(params, jax.random.key(0), v)
  np.testing.assert_allclose(r.eigenvalues, np.linalg.eigvalsh(h)[-1:], rtol=1e-4)
  assert abs(t.estimate - np.trace(h)) < 3 * t.stderr
  assert c == pytest.approx(flat(v) @ h @ flat(v) / (flat(v) @ flat(v)), rel=1e-4)
  with pytest.raises(KeyError, match='no parameters under'):
    probes.restrict(loss_fn, params, ('conv9',))


def test_every_spectral_probe_gives_the_ggn_with_operator_ggn(ggn_mlp):
  """operator='ggn' on every spectral probe (and ggn_loss, gnvp) against the dense J^T H_out J."""
  _, outputs_fn, loss_of_outputs, params = ggn_mlp
  flat_p, unravel = ravel_pytree(params)
  jac = np.asarray(jax.jacobian(lambda f: outputs_fn(unravel(f)).reshape(-1))(flat_p), np.float64)
  out = outputs_fn(params)
  h_out = np.asarray(
    jax.hessian(lambda o: loss_of_outputs(o.reshape(out.shape)))(out.reshape(-1)), np.float64
  )
  ggn = jac.T @ h_out @ jac
  eig = np.linalg.eigvalsh(ggn)
  assert eig[0] > -1e-6 * eig[-1]  # positive semi-definite
  hessian = np.asarray(jax.hessian(lambda f: loss_of_outputs(outputs_fn(unravel(f))))(flat_p))
  assert np.abs(hessian - ggn).max() > 1e-2 * np.abs(ggn).max()  # the two differ here
  split = probes.SplitLoss(outputs_fn, loss_of_outputs)
  n = flat_p.size

  def probed(p, key):
    ggn = dict(operator='ggn')
    return (
      probes.top_eigenvalues(split, p, key, k=2, tol=1e-5, **ggn),
      probes.top_eigenvalues(split, p, key, which='smallest', tol=1e-5, **ggn),
      probes.hessian_trace_hutchpp(split, p, key, num_products=3 * n, **ggn),
      probes.hessian_trace(split, p, key, num_samples=100, **ggn),
      probes.hessian_diagonal(split, p, key, num_samples=100, **ggn),
      probes.spectral_density(split, p, key, num_probes=2, num_iterations=20, **ggn),
      probes.hvp(probes.ggn_loss(outputs_fn, loss_of_outputs, p), p, p),
      probes.gnvp(outputs_fn, loss_of_outputs, p, p),
    )

  top, bottom, hpp, hutch, diag, density, hv, gv = jax.jit(probed)(params, jax.random.key(3))
  np.testing.assert_allclose(top.eigenvalues, eig[::-1][:2], rtol=1e-4)
  assert abs(float(bottom.eigenvalues[0])) < 1e-4 * eig[-1]  # PSD: the bottom is 0, not negative
  assert float(hpp.estimate) == pytest.approx(np.trace(ggn), rel=1e-4)
  assert abs(float(hutch.estimate) - np.trace(ggn)) < 4 * float(hutch.stderr)
  d_err = np.abs(flat(diag.estimate) - np.diag(ggn)) / np.maximum(flat(diag.stderr), 1e-9)
  assert np.mean(d_err < 4) > 0.95
  weighty = np.asarray(density.nodes)[np.asarray(density.weights) > 1e-6]
  assert weighty.min() > -1e-3 * eig[-1] and weighty.max() < 1.01 * eig[-1]  # inside [0, max]
  np.testing.assert_allclose(flat(hv), ggn @ flat(params), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(flat(gv), flat(hv), rtol=1e-4, atol=1e-6)


def test_ggn_of_a_block_is_the_dense_ggns_diagonal_block_and_needs_a_split_loss(ggn_mlp, mlp):
  model, outputs_fn, loss_of_outputs, params = ggn_mlp
  block = models.kernel_path(model, 1)
  block_outputs, bp = probes.restrict(outputs_fn, params, block)
  ((name, w),) = bp.items()
  jac = np.asarray(
    jax.jacobian(lambda f: block_outputs({name: f.reshape(w.shape)}).reshape(-1))(w.reshape(-1)),
    np.float64,
  )
  o = outputs_fn(params)
  h_out = np.asarray(jax.hessian(lambda z: loss_of_outputs(z.reshape(o.shape)))(o.reshape(-1)))
  top = probes.top_eigenvalues(
    probes.SplitLoss(outputs_fn, loss_of_outputs),
    params,
    jax.random.key(0),
    block=block,
    operator='ggn',
    tol=1e-5,
  )
  assert float(top.eigenvalues[0]) == pytest.approx(
    np.linalg.eigvalsh(jac.T @ h_out @ jac)[-1], rel=1e-4
  )
  loss_fn, params = mlp
  with pytest.raises(TypeError, match='SplitLoss'):
    probes.top_eigenvalues(loss_fn, params, jax.random.key(0), operator='ggn')
  with pytest.raises(ValueError, match="'hessian' or 'ggn' or 'ef'"):
    probes.hessian_trace(loss_fn, params, jax.random.key(0), operator='kfac')


def test_a_new_operator_is_one_entry_in_the_table_and_every_probe_takes_it(monkeypatch):
  """OPERATORS is the one place that maps operator= to a matvec: an entry added there (a
  diagonal D, ignoring the loss) reaches Lanczos and the estimators unchanged."""
  d = jnp.linspace(1.0, 2.0, 30)
  monkeypatch.setitem(
    operators.OPERATORS,
    'diagonal',
    lambda loss_fn, params, block: (params, lambda v: {'x': d * v['x']}),
  )
  loss_fn, params, key = lambda p: jnp.sum(p['x'] ** 4), {'x': jnp.zeros(30)}, jax.random.key(0)
  top = probes.top_eigenvalues(loss_fn, params, key, tol=1e-5, operator='diagonal')
  trace = probes.hessian_trace(loss_fn, params, key, num_samples=4, operator='diagonal')
  diag = probes.hessian_diagonal(loss_fn, params, key, num_samples=4, operator='diagonal')
  assert float(top.eigenvalues[0]) == pytest.approx(2.0, rel=1e-5)
  assert float(trace.estimate) == pytest.approx(float(d.sum()), rel=1e-6)  # z_i^2 = 1
  np.testing.assert_allclose(diag.estimate['x'], d, rtol=1e-6)
  with pytest.raises(ValueError, match="'fisher_exact' or 'diagonal', got 'kfac'"):
    probes.hessian_trace(loss_fn, params, key, operator='kfac')
