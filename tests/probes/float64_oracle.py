"""The probes against dense float64 Hessians, with tolerances only float64 can meet.

Run by test_precision_and_inputs.py in a subprocess (x64 is a process-wide switch). Each
call is jitted: one compiled program per check, not one per operation. Prints
one line per check and exits non-zero on the first that fails. The tolerances (1e-9
relative) are far below what a wrong factor of 2, a wrong sign or a transposed block
would give.
"""

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from bnjax import models, probes  # noqa: E402

RTOL = 1e-9


def check(name, got, want, rtol=RTOL, atol=0.0):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = np.max(np.abs(want)) or 1.0
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol + rtol * scale, err_msg=name)
  print(f'{name}: ok (max abs error {np.max(np.abs(got - want)):.2e}, scale {scale:.2e})')


def main():
  x = jax.random.normal(jax.random.key(1), (16, 5), jnp.float64)
  y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
  model = models.get_model('mlp', 'batch', hidden=(6, 4), num_classes=3)
  v = model.init({'params': jax.random.key(0), 'noise': jax.random.key(0)}, x, train=False)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), v['params'])
  stats = v['batch_stats']

  def outputs_fn(p):
    out, _ = model.apply(
      {'params': p, 'batch_stats': stats}, x, train=True, mutable=['batch_stats']
    )
    return out

  loss_of_outputs = lambda out: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
  loss_fn = lambda p: loss_of_outputs(outputs_fn(p))
  flat, unravel = ravel_pytree(params)
  assert flat.dtype == jnp.float64
  h = np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat))
  np.testing.assert_allclose(h, h.T, atol=1e-12)
  n = flat.size
  vec = jax.random.normal(jax.random.key(3), (n,), jnp.float64)

  product = jax.jit(lambda p, u: probes.hvp(loss_fn, p, u))(params, unravel(vec))
  check('hvp', ravel_pytree(product)[0], h @ vec)
  product = jax.jit(lambda p, u: probes.hvp_operator(loss_fn, p)(u))(params, unravel(vec))
  check('hvp_operator', ravel_pytree(product)[0], h @ vec)
  jac = np.asarray(jax.jit(jax.jacobian(lambda f: outputs_fn(unravel(f)).reshape(-1)))(flat))
  out = outputs_fn(params)
  h_out = jax.jit(jax.hessian(lambda o: loss_of_outputs(o.reshape(out.shape))))(out.reshape(-1))
  gnvp = jax.jit(lambda p, u: probes.gnvp(outputs_fn, loss_of_outputs, p, u))(params, unravel(vec))
  check('gnvp', ravel_pytree(gnvp)[0], jac.T @ np.asarray(h_out) @ jac @ vec)
  eig = np.linalg.eigvalsh(h)
  for which, exact in (('largest', eig[::-1][:2]), ('smallest', eig[:2])):
    r = jax.jit(
      lambda p, key, which=which: probes.top_eigenvalues(
        loss_fn, p, key, k=2, which=which, tol=1e-12, max_iterations=n
      )
    )(params, jax.random.key(4))
    check(f'top_eigenvalues {which}', r.eigenvalues, exact)
  check(
    'hessian_trace_hutchpp (sketch spans everything)',
    jax.jit(lambda p, key: probes.hessian_trace_hutchpp(loss_fn, p, key, num_products=3 * n))(
      params, jax.random.key(5)
    ).estimate,
    np.trace(h),
  )
  check(
    'directional_curvature',
    jax.jit(lambda p, u: probes.directional_curvature(loss_fn, p, u))(params, unravel(vec)),
    vec @ h @ vec / (vec @ vec),
  )
  grad = jax.jit(jax.grad(lambda f: loss_fn(unravel(f))))
  g = np.asarray(grad(flat))
  etas = jnp.asarray([1e-3, 1e-2])
  land = jax.jit(lambda p, e: probes.gradient_landscape(loss_fn, p, e))(params, etas)
  moved = [np.asarray(grad(flat - e * g)) for e in etas]
  check('landscape grad_diff', land.grad_diff, [np.linalg.norm(m - g) for m in moved])
  check('landscape loss', land.loss, [loss_fn(unravel(flat - e * g)) for e in etas])
  check_fisher(outputs_fn, y, params)
  print('all float64 checks passed')


def check_fisher(outputs_fn, y, params):
  """The empirical, exact and Monte-Carlo Fisher against dense matrices built from
  per-example gradients (jax.jacrev of optax's per-example cross-entropy)."""
  flat, unravel = ravel_pytree(params)
  n, examples = flat.size, y.shape[0]

  def jacobian(labels):  # [N, P]: one per-example gradient a row
    per_example = lambda f, t: optax.softmax_cross_entropy_with_integer_labels(
      outputs_fn(unravel(f)), t
    )
    return np.asarray(jax.jit(jax.jacrev(per_example))(flat, labels))

  loss = probes.PerExampleLoss(outputs_fn, y, mc_samples=2, key=jax.random.key(6))
  probs = np.asarray(jax.nn.softmax(outputs_fn(params)))
  by_class = [jacobian(jnp.full(examples, c)) for c in range(probs.shape[1])]
  dense = {
    'ef': jacobian(y).T @ jacobian(y) / examples,
    'fisher_exact': sum(j.T @ (probs[:, c, None] * j) for c, j in enumerate(by_class)) / examples,
    'fisher': sum(j.T @ j for j in map(jacobian, loss.sampled_targets(params))) / (2 * examples),
  }
  for name, matrix in dense.items():
    top = jax.jit(
      lambda p, key, name=name: probes.top_eigenvalues(
        loss, p, key, k=2, tol=1e-12, max_iterations=n, operator=name
      )
    )(params, jax.random.key(4))
    check(f'top_eigenvalues {name}', top.eigenvalues, np.linalg.eigvalsh(matrix)[::-1][:2])
    trace = jax.jit(
      lambda p, key, name=name: probes.hessian_trace_hutchpp(
        loss, p, key, num_products=3 * n, operator=name
      )
    )(params, jax.random.key(5))
    check(f'hessian_trace_hutchpp {name}', trace.estimate, np.trace(matrix))


if __name__ == '__main__':
  main()
