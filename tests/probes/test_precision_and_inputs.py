"""Across the package: matmul precision, float64 tolerances and clear errors for bad input."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import probes
from small_runs import subprocess_env

from .cases import dense_hessian


def test_probes_trace_at_highest_precision_unless_told(quadratic):
  loss_fn, params, _ = quadratic
  key = jax.random.key(0)
  calls = {
    'hvp': lambda p, **kw: probes.hvp(loss_fn, p, p, **kw),
    'hvp_operator': lambda p, **kw: probes.hvp_operator(loss_fn, p, **kw)(p),
    'directional_curvature': lambda p, **kw: probes.directional_curvature(loss_fn, p, p, **kw),
    'top_eigenvalues': lambda p, **kw: probes.top_eigenvalues(
      loss_fn, p, key, k=1, num_iterations=3, **kw
    ),
    'hessian_trace': lambda p, **kw: probes.hessian_trace(loss_fn, p, key, num_samples=2, **kw),
    'spectral_density': lambda p, **kw: probes.spectral_density(
      loss_fn, p, key, num_probes=1, num_iterations=3, **kw
    ),
    'gnvp': lambda p, **kw: probes.gnvp(
      lambda q: q['x'] @ q['x'] * q['x'], lambda out: 0.5 * out @ out, p, p, **kw
    ),
    'gradient_landscape': lambda p, **kw: probes.gradient_landscape(
      loss_fn, p, jnp.array([0.1]), **kw
    ),
    'ics': lambda p, **kw: probes.ics(loss_fn, p, p, [('x',)], **kw),
  }
  for name, call in calls.items():
    for kw, expected in (({}, 'HIGHEST'), ({'precision': 'default'}, 'DEFAULT')):
      text = jax.jit(lambda p: call(p, **kw)).lower(params).as_text()
      dots = [l for l in text.splitlines() if 'stablehlo.dot_general' in l]
      assert dots, name
      assert all(f'precision = [{expected}, {expected}]' in l for l in dots), (name, kw)


def test_probes_against_dense_float64_hessians_at_float64_tolerances():
  """Float64 oracle (a subprocess: x64 is process-wide): relative errors of 1e-9."""
  import subprocess
  import sys

  script = pathlib.Path(__file__).parent / 'float64_oracle.py'
  out = subprocess.run(
    [sys.executable, str(script)],
    capture_output=True,
    text=True,
    timeout=300,
    env=subprocess_env(optimised=False),  # CPU, most optimisations off as here, the tests' cache
  )
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  assert 'all float64 checks passed' in out.stdout


def test_non_scalar_loss_and_integer_leaves_fail_clearly(quadratic):
  loss_fn, params, _ = quadratic
  with pytest.raises(ValueError, match='must return a scalar, got \\(20,\\)'):
    probes.hvp(lambda p: p['x'] * 2.0, params, params)
  with pytest.raises(TypeError, match=r"leaf \['step'\] has dtype int32"):
    probes.gradient_landscape(
      lambda p: loss_fn(p) + p['step'], dict(params, step=jnp.int32(3)), jnp.array([0.1])
    )
  with pytest.raises(TypeError, match='floating scalar'):
    probes.hessian_trace(lambda p: jnp.int32(1), params, jax.random.key(0))
  with pytest.raises(ValueError, match='only together with gradient'):
    probes.gradient_landscape(loss_fn, params, jnp.array([0.1]), loss_at_start=1.0)


def test_a_whole_equinox_module_as_params_says_in_one_line_to_partition_it():
  model = eqx.nn.MLP(3, 2, 6, 1, key=jax.random.key(0))  # leaves: arrays and two functions
  x = jax.random.normal(jax.random.key(1), (10, 3))
  loss_of_model = lambda m: jnp.mean(jax.vmap(m)(x) ** 2)
  key = jax.random.key(2)
  calls = {
    'hvp': lambda: probes.hvp(loss_of_model, model, model),
    'top_eigenvalues': lambda: probes.top_eigenvalues(loss_of_model, model, key),
    'blocks': lambda: probes.hessian_trace(loss_of_model, model, key, blocks='layers'),
    'hessian_trace': lambda: probes.hessian_trace(loss_of_model, model, key, num_samples=2),
    'random_directions': lambda: probes.random_directions(key, model),
    'loss_surface': lambda: probes.loss_surface(loss_of_model, model, model, jnp.zeros(1)),
    'adaptive_sharpness': lambda: probes.adaptive_sharpness(loss_of_model, model, key, 0.1),
    'gradient_landscape': lambda: probes.gradient_landscape(loss_of_model, model, jnp.array([0.1])),
  }
  for name, call in calls.items():
    with pytest.raises(TypeError) as error:
      call()
    message = str(error.value)
    assert '\n' not in message, name
    assert message.startswith(
      'params has a non-array leaf at .activation (custom_jvp): pass '
      'only the arrays, e.g. eqx.partition(model, eqx.is_array)[0]'
    ), name
  # What the message says to do works: the arrays as params, the rest recombined.
  params, static = eqx.partition(model, eqx.is_array)
  loss_fn = lambda p: loss_of_model(eqx.combine(p, static))
  top = jax.jit(lambda p, k: probes.top_eigenvalues(loss_fn, p, k, tol=1e-5))(params, key)
  exact = np.linalg.eigvalsh(dense_hessian(loss_fn, params))[-1]
  assert float(top.eigenvalues[0]) == pytest.approx(exact, rel=1e-4)
