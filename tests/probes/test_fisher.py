"""fisher.py: the empirical, Monte-Carlo and exact Fisher (operator='ef' | 'fisher' |
'fisher_exact') against dense matrices built from per-example gradients (jax.jacrev of
optax's per-example cross-entropy), through every spectral probe."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bnjax import probes
from bnjax.probes import operators

from .cases import flat


def per_example_jacobian(outputs_fn, params, labels):
  """[N, P]: the gradients of l_n = cross-entropy(f_n, labels_n), one row per example."""
  flat_p, unravel = ravel_pytree(params)
  losses = lambda f: optax.softmax_cross_entropy_with_integer_labels(outputs_fn(unravel(f)), labels)
  return np.asarray(jax.jit(jax.jacrev(losses))(flat_p), np.float64)


def dense_matrices(outputs_fn, targets, params, mc_labels):
  """The three Fisher matrices from per-example gradients: EF = (1/N) sum g_n g_n^T with
  the true labels; F = (1/N) sum_n sum_c p_nc g_n(c) g_n(c)^T, the expectation over each
  label c; F_MC = (1/(N M)) sum_m sum_n g_n(y_nm) g_n(y_nm)^T over the drawn labels."""
  n, num_classes = outputs_fn(params).shape
  probs = np.asarray(jax.nn.softmax(outputs_fn(params)), np.float64)
  j = per_example_jacobian(outputs_fn, params, targets)
  ef = j.T @ j / n
  fisher = (
    sum(
      jc.T @ (probs[:, c, None] * jc)
      for c, jc in enumerate(
        per_example_jacobian(outputs_fn, params, jnp.full(n, c)) for c in range(num_classes)
      )
    )
    / n
  )
  mc = [per_example_jacobian(outputs_fn, params, labels) for labels in mc_labels]
  return {'ef': ef, 'fisher_exact': fisher, 'fisher': sum(jm.T @ jm for jm in mc) / (n * len(mc))}


def operator_matrix(loss, params, operator):
  """The operator's matrix, one product per basis vector."""
  flat_p, unravel = ravel_pytree(params)
  _, matvec = operators.curvature_operator(loss, params, None, operator)
  columns = jax.jit(jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0]))(jnp.eye(flat_p.size))
  return np.asarray(columns, np.float64).T


@pytest.fixture(scope='module')
def fisher_case(classifier):
  outputs_fn, targets, params = classifier
  loss = probes.PerExampleLoss(outputs_fn, targets, mc_samples=3, key=jax.random.key(5))
  return loss, params, dense_matrices(outputs_fn, targets, params, loss.sampled_targets(params))


def test_each_operator_is_its_dense_matrix_and_fisher_exact_is_the_ggn(fisher_case, classifier):
  loss, params, dense = fisher_case
  scale = np.abs(dense['fisher_exact']).max()
  for name, matrix in dense.items():
    np.testing.assert_allclose(
      operator_matrix(loss, params, name), matrix, rtol=1e-4, atol=1e-5 * scale, err_msg=name
    )
  # The identity: for softmax cross-entropy the Fisher is the Gauss-Newton matrix.
  outputs_fn, targets, _ = classifier
  split = probes.SplitLoss(
    outputs_fn, lambda o: optax.softmax_cross_entropy_with_integer_labels(o, targets).mean()
  )
  np.testing.assert_allclose(
    operator_matrix(split, params, 'ggn'), dense['fisher_exact'], rtol=1e-4, atol=1e-5 * scale
  )
  np.testing.assert_allclose(
    operator_matrix(loss, params, 'ggn'), dense['fisher_exact'], rtol=1e-4, atol=1e-5 * scale
  )
  assert np.abs(dense['ef'] - dense['fisher_exact']).max() > 0.1 * scale  # EF is not F here
  # The loss itself is the mean of the per-example losses; 'sum' scales every matrix by N.
  assert float(loss(params)) == pytest.approx(float(split(params)), rel=1e-6)
  summed = probes.PerExampleLoss(loss.outputs_fn, loss.targets, reduction='sum')
  np.testing.assert_allclose(
    operator_matrix(summed, params, 'ef'), 16 * dense['ef'], rtol=1e-4, atol=16e-5 * scale
  )


@pytest.mark.parametrize('operator', ['ef', 'fisher', 'fisher_exact'])
def test_every_spectral_probe_gives_the_dense_fisher(fisher_case, operator):
  loss, params, dense = fisher_case
  matrix = dense[operator]
  eig = np.linalg.eigvalsh(matrix)
  n = matrix.shape[0]

  def probed(p, key):
    kw = dict(operator=operator)
    return (
      probes.top_eigenvalues(loss, p, key, k=2, tol=1e-5, **kw),
      probes.hessian_trace_hutchpp(loss, p, key, num_products=3 * n, **kw),
      probes.hessian_trace(loss, p, key, num_samples=100, **kw),
      probes.hessian_diagonal(loss, p, key, num_samples=100, **kw),
      probes.spectral_density(loss, p, key, num_probes=4, num_iterations=20, **kw),
    )

  top, hutchpp, hutch, diag, density = jax.jit(probed)(params, jax.random.key(3))
  np.testing.assert_allclose(top.eigenvalues, eig[::-1][:2], rtol=1e-4)
  assert float(hutchpp.estimate) == pytest.approx(np.trace(matrix), rel=1e-4)
  assert abs(float(hutch.estimate) - np.trace(matrix)) < 4 * float(hutch.stderr)
  z = np.abs(flat(diag.estimate) - np.diag(matrix)) / np.maximum(flat(diag.stderr), 1e-9)
  assert np.mean(z < 4) > 0.95
  nodes = np.asarray(density.nodes)[np.asarray(density.weights) > 1e-6]
  assert nodes.min() > -1e-3 * eig[-1] and nodes.max() < 1.001 * eig[-1]  # PSD: inside [0, max]


def test_per_layer_fisher_is_the_dense_fishers_diagonal_block(fisher_case):
  loss, params, dense = fisher_case
  kernel = np.arange(24)  # dense1/bias [6] comes first, then dense1/kernel [4, 6]
  sizes = [leaf.size for leaf in jax.tree.leaves(params)]
  assert sizes[:2] == [6, 24]
  top = probes.top_eigenvalues(
    loss, params, jax.random.key(0), tol=1e-5, operator='ef', blocks=[('dense1', 'kernel')]
  )
  block = dense['ef'][np.ix_(6 + kernel, 6 + kernel)]
  assert float(top['dense1/kernel'].eigenvalues[0]) == pytest.approx(
    np.linalg.eigvalsh(block)[-1], rel=1e-4
  )


def test_the_monte_carlo_fisher_tends_to_the_exact_one_and_is_one_matrix(fisher_case):
  loss, params, dense = fisher_case
  exact = dense['fisher_exact']
  errors = {}
  for m in (1, 4000):
    many = probes.PerExampleLoss(loss.outputs_fn, loss.targets, mc_samples=m, key=jax.random.key(7))
    errors[m] = np.linalg.norm(operator_matrix(many, params, 'fisher') - exact) / np.linalg.norm(
      exact
    )
  assert errors[4000] < 0.05 < errors[1]
  # The labels are drawn once per operator: two products with one vector agree exactly.
  _, matvec = operators.curvature_operator(loss, params, None, 'fisher')
  v = jax.tree.map(jnp.ones_like, params)
  np.testing.assert_array_equal(flat(matvec(v)), flat(matvec(v)))


def test_per_example_loss_fails_in_one_line_on_wrong_shapes_and_operators(classifier, mlp):
  outputs_fn, targets, params = classifier
  key = jax.random.key(0)

  def message(error, call):
    with pytest.raises(error) as caught:
      call()
    assert '\n' not in str(caught.value)
    return str(caught.value)

  wrong = {
    'logits [N, C]': probes.PerExampleLoss(lambda p: outputs_fn(p)[:, :, None], targets),
    'targets are (8,)': probes.PerExampleLoss(outputs_fn, targets[:8]),
    'integer class labels': probes.PerExampleLoss(outputs_fn, targets.astype(jnp.float32)),
    'one loss per example': probes.PerExampleLoss(
      outputs_fn, targets, example_loss=lambda o, t: jnp.sum(o)
    ),
  }
  for expected, loss in wrong.items():
    error = TypeError if 'integer' in expected else ValueError
    assert expected in message(
      error, lambda loss=loss: probes.hessian_trace(loss, params, key, num_samples=2, operator='ef')
    )
  squared = probes.PerExampleLoss(
    outputs_fn, jax.nn.one_hot(targets, 3), example_loss=lambda o, t: jnp.sum((o - t) ** 2, axis=1)
  )
  probes.hessian_trace(squared, params, key, num_samples=2, operator='ef')  # any loss: EF
  assert 'no example_loss' in message(
    TypeError, lambda: probes.hessian_trace(squared, params, key, operator='fisher')
  )
  assert 'needs loss_fn=probes.PerExampleLoss' in message(
    TypeError, lambda: probes.hessian_trace(mlp[0], mlp[1], key, operator='ef')
  )
  assert "reduction must be 'mean' or 'sum'" in message(
    ValueError, lambda: probes.PerExampleLoss(outputs_fn, targets, reduction='avg')
  )
