"""Runs every probe on a batch sharded over all devices of all processes; process 0 saves.

  XLA_FLAGS=--xla_force_host_platform_device_count=D python tests/probes/multihost_probes.py \
      OUT.npz [COORDINATOR NUM_PROCESSES PROCESS_ID]

Launched by test_multidevice.py as 1 process x 4 devices and 2 processes x 2
devices (jax.distributed on localhost); each process supplies only its slice of the batch.
"""

import sys

import jax

if len(sys.argv) > 2:
  jax.distributed.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from bnjax import models  # noqa: E402
from cases import all_probes  # noqa: E402  (the directory of this script)


def main(out: str) -> None:
  x = np.asarray(jax.random.normal(jax.random.key(0), (32, 6)))
  y = np.asarray(jax.random.randint(jax.random.key(1), (32,), 0, 3))
  model = models.get_model('mlp', 'batch', hidden=(12, 10), num_classes=3)
  v = model.init(jax.random.key(2), jnp.asarray(x), train=False)
  params = v['params']
  new_params = jax.tree.map(lambda p: p + 0.05 * jnp.sin(p + 1.0), params)

  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))
  repl, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  per_process = 32 // jax.process_count()
  mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  batch = {
    'x': jax.make_array_from_process_local_data(sharded, x[mine]),
    'y': jax.make_array_from_process_local_data(sharded, y[mine]),
    'stats': jax.device_put(v['batch_stats'], repl),
  }
  fn = jax.jit(
    all_probes,
    in_shardings=(repl, repl, {'x': sharded, 'y': sharded, 'stats': repl}, repl),
    out_shardings=repl,
  )
  result = fn(
    jax.device_put(params, repl), jax.device_put(new_params, repl), batch, jax.random.key(3)
  )
  leaves = jax.tree_util.tree_flatten_with_path(result)[0]
  arrays = {
    jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0)) for path, leaf in leaves
  }
  if jax.process_index() == 0:
    np.savez(out, **arrays)


if __name__ == '__main__':
  main(sys.argv[1])
