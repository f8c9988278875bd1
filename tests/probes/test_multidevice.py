"""Each probe gives the same answer with the batch on one device or sharded over 8."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bnjax import models
from test_train import subprocess_env

from .cases import all_probes


def test_probes_agree_on_one_device_and_sharded_over_eight():
  assert jax.device_count() >= 8
  x = jax.random.normal(jax.random.key(0), (32, 6))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 3)
  model = models.get_model('mlp', 'batch', hidden=(12, 10), num_classes=3)
  v = model.init(jax.random.key(2), x, train=False)
  params = v['params']
  new_params = jax.tree.map(lambda p: p + 0.05 * jnp.sin(p + 1.0), params)
  batch = {'x': x, 'y': y, 'stats': v['batch_stats']}
  key = jax.random.key(3)

  one = jax.jit(all_probes)(params, new_params, batch, key)

  mesh = jax.make_mesh((8,), ('data',), axis_types=(AxisType.Auto,), devices=jax.devices()[:8])
  repl, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  batch_sharding = {'x': sharded, 'y': sharded, 'stats': repl}
  fn = jax.jit(all_probes, in_shardings=(repl, repl, batch_sharding, repl))
  placed = jax.device_put(batch, batch_sharding)
  assert len(placed['x'].sharding.device_set) == 8
  eight = fn(jax.device_put(params, repl), jax.device_put(new_params, repl), placed, key)

  assert len(jax.tree.leaves(one)) > 20
  for name in one:
    # Tolerance relative to the largest entry of each probe's result (an eigenvector's
    # tiny components carry summation-order noise relative to its unit norm).
    leaves_one, leaves_eight = jax.tree.leaves(one[name]), jax.tree.leaves(eight[name])
    scale = max(float(np.abs(np.asarray(a)).max()) for a in leaves_one)
    for a, b in zip(leaves_one, leaves_eight):
      np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-4 * scale, err_msg=name
      )


@pytest.mark.slow
def test_probes_agree_on_two_processes_and_one(tmp_path):
  """2 JAX processes x 2 devices (jax.distributed on localhost), each holding half the
  batch, give the same hvp, eigenpairs and every other probe as 1 process x 4 devices."""
  script = [sys.executable, str(pathlib.Path(__file__).parent / 'multihost_probes.py')]
  one = subprocess.run(
    [*script, str(tmp_path / 'one.npz')],
    env=subprocess_env(4, optimised=False),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  port = 20000 + os.getpid() % 10000
  two = [
    subprocess.Popen(
      [*script, str(tmp_path / 'two.npz'), f'127.0.0.1:{port}', '2', str(i)],
      env=subprocess_env(2, optimised=False),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for p in two:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  a, b = np.load(tmp_path / 'one.npz'), np.load(tmp_path / 'two.npz')
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 20
  assert any(k.startswith("['hvp']") for k in a.files) and any("['eig']" in k for k in a.files)
  probe_of = lambda name: name.split(']')[0]  # "['hvp']['dense1']..." -> "['hvp'"
  for name in a.files:
    # As above: tolerance relative to the largest entry of the probe's whole result (a
    # bias gradient that is zero in exact arithmetic is pure rounding noise).
    scale = max(float(np.abs(a[n]).max()) for n in a.files if probe_of(n) == probe_of(name))
    np.testing.assert_allclose(b[name], a[name], rtol=2e-4, atol=1e-4 * scale, err_msg=name)
