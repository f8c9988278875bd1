"""Loss surfaces and their directions against independent answers: closed forms on
quadratics, numpy filter norms, one-by-one loss evaluations, known eigenvectors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnjax import probes


class ConvNet(nn.Module):
  """Conv + BatchNorm + ReLU + Dense head: every kind of leaf a filter rule must handle."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x).mean((1, 2))
    return nn.Dense(3)(x)


def convnet_loss(seed=0):
  """(loss_fn, params): train-mode BN, batch statistics, updated averages dropped."""
  model = ConvNet()
  x = jax.random.normal(jax.random.key(10), (6, 5, 5, 2))
  y = jax.random.randint(jax.random.key(11), (6,), 0, 3)
  variables = model.init(jax.random.key(seed), x, train=False)

  def loss_fn(params):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss_fn, variables['params']


def leaves_by_name(tree):
  return {
    '/'.join(str(k.key) for k in path): np.asarray(leaf, np.float64)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def quadratic(seed=0):
  """L(p) = 0.5 x^T A x over x = [p['u'], p['v'].ravel()] (7 numbers in two leaves)."""
  rng = np.random.default_rng(seed)
  m = rng.normal(size=(7, 7))
  a = m @ m.T / 7 + np.eye(7)
  flat = lambda p: jnp.concatenate([p['u'], p['v'].ravel()])
  loss_fn = lambda p: 0.5 * flat(p) @ jnp.asarray(a, jnp.float32) @ flat(p)
  tree = lambda x: {
    'u': jnp.asarray(x[:3], jnp.float32),
    'v': jnp.asarray(x[3:].reshape(2, 2), jnp.float32),
  }
  return loss_fn, a, tree, rng


def test_2d_surface_of_a_quadratic_is_the_closed_form():
  loss_fn, a, tree, rng = quadratic()
  p, d1, d2 = (rng.normal(size=7) for _ in range(3))
  ga, gb = np.linspace(-1.0, 2.0, 5), np.linspace(-0.5, 0.5, 4)  # [n] x [m], n != m
  s = jax.jit(lambda p, d1, d2: probes.loss_surface(loss_fn, p, [d1, d2], (ga, gb), batch_size=3))(
    tree(p), tree(d1), tree(d2)
  )
  x = p[None, None] + ga[:, None, None] * d1 + gb[None, :, None] * d2  # [n, m, 7]
  expected = 0.5 * np.einsum('nmi,ij,nmj->nm', x, a, x)
  assert s.loss.shape == (5, 4)
  np.testing.assert_allclose(s.loss, expected, rtol=1e-5)
  np.testing.assert_allclose(s.grid[0], ga, rtol=1e-6)
  np.testing.assert_allclose(s.grid[1], gb, rtol=1e-6)
  np.testing.assert_allclose(s.center_loss, 0.5 * p @ a @ p, rtol=1e-5)
  # 1-D: one unstacked direction, the same grid.
  line = probes.loss_surface(loss_fn, tree(p), tree(d1), ga)
  x = p[None] + ga[:, None] * d1
  np.testing.assert_allclose(line.loss, 0.5 * np.einsum('ni,ij,nj->n', x, a, x), rtol=1e-5)


def test_filter_normalisation_matches_the_params_filters_leaf_by_leaf():
  _, params = convnet_loss()
  d = jax.jit(lambda k, p: probes.random_directions(k, p, 3))(jax.random.key(0), params)
  w = leaves_by_name(params)
  for name, di in leaves_by_name(d).items():
    assert di.shape == (3, *w[name].shape)
    if 'bias' in name or 'BatchNorm' in name:  # the default ignore=('bias', 'norm')
      assert not di.any(), name
      continue
    filter_axes = tuple(range(w[name].ndim - 1))  # kernels: the last axis is the filter's
    expected = np.sqrt(np.sum(w[name] ** 2, axis=filter_axes))
    for k in range(3):
      np.testing.assert_allclose(
        np.sqrt(np.sum(di[k] ** 2, axis=filter_axes)), expected, rtol=1e-5, err_msg=name
      )
    assert not np.allclose(di[0], di[1])  # independent draws
  # ignore=(): vectors (biases, BN scale and offset) are normalised per leaf.
  d = probes.random_directions(jax.random.key(1), params, 1, ignore=())
  for name, di in leaves_by_name(d).items():
    if w[name].ndim == 1:
      np.testing.assert_allclose(
        np.linalg.norm(di[0]), np.linalg.norm(w[name]), rtol=1e-5, atol=1e-12, err_msg=name
      )
  # 'layer': every leaf to its params leaf's norm; 'unit': the whole direction to 1.
  d = probes.random_directions(jax.random.key(2), params, 1, normalize='layer', ignore=())
  for name, di in leaves_by_name(d).items():
    np.testing.assert_allclose(np.linalg.norm(di), np.linalg.norm(w[name]), rtol=1e-5)
  d = probes.random_directions(jax.random.key(3), params, 2, normalize='unit')
  norms = np.sqrt(
    sum(np.sum(di**2, axis=tuple(range(1, di.ndim))) for di in leaves_by_name(d).values())
  )
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


@pytest.mark.parametrize('batch_size', [1, 4])
def test_loss_surface_of_a_flax_net_equals_losses_evaluated_one_by_one(batch_size):
  loss_fn, params = convnet_loss()
  d = probes.random_directions(jax.random.key(0), params, 2)
  ga, gb = np.linspace(-1.0, 1.0, 3), np.linspace(-0.5, 1.0, 4)
  s = jax.jit(lambda p, d: probes.loss_surface(loss_fn, p, d, (ga, gb), batch_size=batch_size))(
    params, d
  )
  one = jax.jit(
    lambda p, d, a, b: loss_fn(jax.tree.map(lambda w, v: w + a * v[0] + b * v[1], p, d))
  )
  expected = np.array([[one(params, d, a, b) for b in gb] for a in ga])
  np.testing.assert_allclose(s.loss, expected, rtol=2e-6)
  np.testing.assert_allclose(s.center_loss, loss_fn(params), rtol=1e-6)


def test_interpolation_between_two_nets_hits_both_endpoints():
  loss_fn, params_a = convnet_loss(seed=0)
  _, params_b = convnet_loss(seed=1)
  direction = probes.interpolation_direction(params_a, params_b)
  s = jax.jit(lambda a, d: probes.loss_surface(loss_fn, a, d, jnp.linspace(0.0, 1.0, 5)))(
    params_a, direction
  )
  assert s.loss.shape == (5,)
  np.testing.assert_allclose(s.loss[0], loss_fn(params_a), rtol=1e-6)
  np.testing.assert_allclose(s.loss[-1], loss_fn(params_b), rtol=1e-5)
  assert abs(float(s.loss[0]) - float(s.loss[-1])) > 1e-3  # two different nets


def test_eigen_directions_of_a_diagonal_hessian_are_the_top_coordinate_axes():
  h = {'a': jnp.array([1.0, 7.0, 2.0]), 'b': jnp.array([[0.5, 5.0], [3.0, 0.1]])}
  loss_fn = lambda p: 0.5 * sum(jnp.sum(h[k] * p[k] ** 2) for k in p)
  params = {'a': jnp.ones(3), 'b': jnp.ones((2, 2))}
  v = jax.jit(lambda p, k: probes.eigen_directions(loss_fn, p, k, num=2, tol=1e-6))(
    params, jax.random.key(0)
  )
  top1 = {'a': np.array([0, 1.0, 0]), 'b': np.zeros((2, 2))}  # h = 7
  top2 = {'a': np.zeros(3), 'b': np.array([[0, 1.0], [0, 0]])}  # h = 5
  for i, axis in enumerate((top1, top2)):
    for k in ('a', 'b'):
      np.testing.assert_allclose(np.abs(v[k][i]), axis[k], atol=1e-4)
  # block: the top eigenvector of b's diagonal block (h = 5), zero on 'a'.
  v = probes.eigen_directions(loss_fn, params, jax.random.key(1), num=1, tol=1e-6, block=('b',))
  np.testing.assert_allclose(np.abs(v['b'][0]), top2['b'], atol=1e-4)
  assert v['a'].shape == (1, 3) and not np.asarray(v['a']).any()


def test_gradient_direction_gives_gradient_landscape_losses():
  loss_fn, params = convnet_loss()
  g = probes.gradient_direction(loss_fn, params)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(jax.grad(loss_fn)(params))):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  etas = jnp.array([0.1, 0.5, 1.0])
  s = jax.jit(lambda p, g: probes.loss_surface(loss_fn, p, g, -etas))(params, g)
  land = jax.jit(lambda p: probes.gradient_landscape(loss_fn, p, etas))(params)
  np.testing.assert_allclose(s.loss, land.loss, rtol=1e-5)  # L(theta - eta g), two ways
  unit = probes.gradient_direction(loss_fn, params, normalize='unit')
  norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(unit)))
  np.testing.assert_allclose(norm, 1.0, rtol=1e-5)


def test_surface_inputs_are_checked():
  loss_fn, a, tree, rng = quadratic()
  p = tree(rng.normal(size=7))
  three = jax.tree.map(lambda x: jnp.stack([x] * 3), p)
  with pytest.raises(ValueError, match='1 or 2 directions'):
    probes.loss_surface(loss_fn, p, three, jnp.linspace(0, 1, 3))
  with pytest.raises(ValueError, match='grid'):
    probes.loss_surface(loss_fn, p, [p, p], (jnp.zeros(3),))
  with pytest.raises(ValueError, match='normalize'):
    probes.random_directions(jax.random.key(0), p, normalize='filters')
  with pytest.raises(ValueError, match='tree structures'):
    probes.interpolation_direction(p, {'u': p['u']})
  del a
