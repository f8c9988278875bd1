"""blocks=: one result per parameter block in one call, against eigh and the trace of each
diagonal block of dense Hessians and Gauss-Newton matrices, and against block= itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bnjax import probes

from .cases import flat

LAYERS = ['dense1', 'dense2', 'head', 'norm1', 'norm2']


def diagonal_blocks(params, matrix):
  """{first key: the rows and columns of matrix for the leaves under it}, by ravel order."""
  sizes = [(path[0].key, leaf.size) for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
  starts = np.cumsum([0] + [size for _, size in sizes])
  index = {}
  for (name, size), start in zip(sizes, starts):
    index.setdefault(name, []).extend(range(start, start + size))
  return {name: matrix[np.ix_(i, i)] for name, i in index.items()}


def test_named_blocks_groups_leaves_by_their_path_minus_the_last_key():
  params = {
    'a': {'w': jnp.ones(2), 'sub': {'v': jnp.ones(3)}},
    'c': jnp.ones(4),
    'layers': [{'weight': jnp.ones(1), 'bias': jnp.ones(1)}],
  }
  layers = probes.named_blocks(params, 'layers')
  assert list(layers) == ['a/sub', 'a', 'c', 'layers/0']  # in leaf order ('sub' < 'w')
  sizes = {
    name: sum(x.size for x in probes.restrict(lambda p: 0.0, params, b)[1].values())
    for name, b in layers.items()
  }
  assert sizes == {'a': 2, 'a/sub': 3, 'c': 4, 'layers/0': 2}  # 'a' without its submodule
  assert list(probes.named_blocks(params, [('a',), ('layers', 0, 'bias')])) == [
    'a',
    'layers/0/bias',
  ]
  assert list(probes.named_blocks(params, lambda path: path[-1] in ('v', 'weight'))) == [
    'a/sub/v',
    'layers/0/weight',
  ]
  with pytest.raises(ValueError, match="blocks must be 'layers'"):
    probes.named_blocks(params, 'layer')
  with pytest.raises(ValueError, match='list of key paths'):
    probes.named_blocks(params, ['a', 'c'])
  with pytest.raises(KeyError, match='no parameters under'):
    probes.named_blocks(params, [('b',)])
  with pytest.raises(KeyError, match='accepts no leaf path'):
    probes.named_blocks(params, lambda path: False)
  with pytest.raises(ValueError, match='not both'):
    probes.hessian_trace(
      lambda p: jnp.sum(p['c'] ** 2), params, jax.random.key(0), block=('c',), blocks='layers'
    )


def test_every_layers_spectral_probes_match_its_dense_diagonal_block(mlp, mlp_hessian):
  loss_fn, params = mlp
  exact = diagonal_blocks(params, mlp_hessian)
  largest = max(len(h) for h in exact.values())

  def per_layer(p, key):
    layers = dict(blocks='layers')
    return (
      probes.top_eigenvalues(loss_fn, p, key, k=2, tol=1e-5, **layers),
      probes.top_eigenvalues(loss_fn, p, key, which='smallest', tol=1e-5, **layers),
      probes.hessian_trace_hutchpp(loss_fn, p, key, num_products=3 * largest, **layers),
      probes.hessian_trace(loss_fn, p, key, num_samples=200, batch_size=20, **layers),
      probes.spectral_density(loss_fn, p, key, num_probes=8, num_iterations=20, **layers),
    )

  top, bottom, hutchpp, hutch, density = jax.jit(per_layer)(params, jax.random.key(0))
  for result in (top, bottom, hutchpp, hutch, density):
    assert list(result) == LAYERS
  for name, h in exact.items():
    eig = np.linalg.eigvalsh(h)
    scale = np.abs(eig).max()
    np.testing.assert_allclose(top[name].eigenvalues, eig[::-1][:2], rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(bottom[name].eigenvalues, eig[:1], rtol=1e-4, atol=1e-5 * scale)
    # num_products >= 3 n: the sketch spans the block, so Hutch++ is exact.
    assert float(hutchpp[name].estimate) == pytest.approx(np.trace(h), rel=1e-4, abs=1e-5 * scale)
    assert abs(float(hutch[name].estimate) - np.trace(h)) < 4 * float(hutch[name].stderr) + 1e-6
    d = density[name]
    nodes = np.asarray(d.nodes)[np.asarray(d.weights) > 1e-6]
    assert nodes.min() >= eig[0] - 1e-3 * scale and nodes.max() <= eig[-1] + 1e-3 * scale
    trace = len(h) * float(jnp.sum(d.weights * d.nodes))
    assert abs(trace - np.trace(h)) < 4 * float(d.trace_stderr) + 1e-4 * scale


def test_blocks_results_are_block_results_with_folded_keys(mlp):
  """blocks= is block= per block, key fold_in(key, i): the same numbers, for every form."""
  loss_fn, params = mlp
  key = jax.random.key(3)
  kernels = lambda path: path[-1] == 'kernel'
  many = probes.hessian_trace(loss_fn, params, key, num_samples=4, blocks=kernels)
  assert list(many) == ['dense1/kernel', 'dense2/kernel', 'head/kernel']
  for i, name in enumerate(many):
    one = probes.hessian_trace(
      loss_fn, params, jax.random.fold_in(key, i), num_samples=4, block=tuple(name.split('/'))
    )
    np.testing.assert_allclose(many[name].estimate, one.estimate, rtol=1e-6)
  listed = probes.top_eigenvalues(
    loss_fn, params, key, num_iterations=10, blocks=[('dense2',), ('norm1', 'scale')]
  )
  one = probes.top_eigenvalues(
    loss_fn, params, jax.random.fold_in(key, 1), num_iterations=10, block=('norm1', 'scale')
  )
  assert list(listed) == ['dense2', 'norm1/scale']
  np.testing.assert_allclose(listed['norm1/scale'].eigenvalues, one.eigenvalues, rtol=1e-6)
  assert set(listed['dense2'].eigenvectors) == {'dense2/bias', 'dense2/kernel'}  # as restrict


def test_every_layers_top_eigenvalue_and_trace_on_a_conv_net(convnet, convnet_hessian):
  loss_fn, params = convnet
  exact = diagonal_blocks(params, convnet_hessian)
  top, trace = jax.jit(
    lambda p, key: (
      probes.top_eigenvalues(loss_fn, p, key, tol=1e-5, blocks='layers'),
      probes.hessian_trace(loss_fn, p, key, num_samples=60, batch_size=20, blocks='layers'),
    )
  )(params, jax.random.key(1))
  assert list(top) == ['conv1', 'conv2', 'head', 'norm1', 'norm2']
  for name, h in exact.items():
    eig = np.linalg.eigvalsh(h)
    assert bool(top[name].converged[0])
    assert float(top[name].eigenvalues[0]) == pytest.approx(eig[-1], rel=1e-4)
    assert abs(float(trace[name].estimate) - np.trace(h)) < 4 * float(trace[name].stderr) + 1e-6


def test_every_layers_ggn_matches_the_dense_ggns_diagonal_block(ggn_mlp):
  _, outputs_fn, loss_of_outputs, params = ggn_mlp
  flat_p, unravel = ravel_pytree(params)
  jac = np.asarray(jax.jacobian(lambda f: outputs_fn(unravel(f)).reshape(-1))(flat_p), np.float64)
  out = outputs_fn(params)
  h_out = np.asarray(
    jax.hessian(lambda o: loss_of_outputs(o.reshape(out.shape)))(out.reshape(-1)), np.float64
  )
  exact = diagonal_blocks(params, jac.T @ h_out @ jac)
  split = probes.SplitLoss(outputs_fn, loss_of_outputs)
  n = flat(params).size
  top, trace = jax.jit(
    lambda p, key: (
      probes.top_eigenvalues(split, p, key, tol=1e-5, operator='ggn', blocks='layers'),
      probes.hessian_trace_hutchpp(
        split, p, key, num_products=3 * n, operator='ggn', blocks='layers'
      ),
    )
  )(params, jax.random.key(2))
  assert list(top) == list(exact) == ['dense1', 'head', 'norm1']
  for name, g in exact.items():
    assert float(top[name].eigenvalues[0]) == pytest.approx(np.linalg.eigvalsh(g)[-1], rel=1e-4)
    assert float(trace[name].estimate) == pytest.approx(np.trace(g), rel=1e-4)
