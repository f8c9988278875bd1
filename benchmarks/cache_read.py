r"""What reading a run's train program back from the persistent compilation cache costs,
probe by probe: the program's size and the time XLA takes to load it.

  python benchmarks/cache_read.py --config=configs/sweeps/local_vgg.py:bn_lr0.1_seed0

For the train chunk (``make_train_chunk`` as ``bnjax.train`` jits it, one call of
``steps_per_call`` steps) with no probe, with each of the config's probes alone and with
all of them: the compile time (trace, lower, XLA), the optimised module's instructions and
computations, its XLA:CPU YNNPACK fusions, the serialised executable's size, and the
median of 3 loads of it in a new process, after one (``deserialize_and_load``: what a cache hit
costs besides reading the file). On XLA:CPU (jaxlib 0.10.2) a load finds each YNNPACK
fusion's instruction by a linear search of the module (``YnnFusionThunkFromProto``), so
it costs about fusions x instructions: probes that add both cost most. About 10 minutes
on 2 CPU cores for the reduced VGG.
"""

import argparse
import pathlib
import pickle
import re
import subprocess
import sys
import tempfile
import time

from bnjax import config_lib, xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]


def program_size(compiled) -> dict[str, float]:
  """Instructions, computations and YNNPACK fusions of a compiled program's HLO."""
  text = compiled.as_text()
  return {
    'instructions': len(re.findall(r'^\s+(?:ROOT )?%?[\w.\-]+ = ', text, re.M)),
    'computations': len(re.findall(r'^(?:ENTRY )?%?[\w.\-]+ .*\{\s*$', text, re.M)),
    'ynn fusions': text.count('"kind":"__ynn_fusion"'),
  }


def measure(config, config_spec: str) -> dict[str, float]:
  """Compiles ``config``'s train chunk; its size and its load time in a new process."""
  import jax
  from jax.experimental.serialize_executable import serialize

  from accelerator import trainer_chunk
  from bnjax.train import data_mesh

  jitted, init, batches = trainer_chunk(config, data_mesh())
  state = jax.eval_shape(init, jax.ShapeDtypeStruct(batches['inputs'].shape[1:], 'float32'))
  batches = jax.tree.map(lambda b: jax.ShapeDtypeStruct(b.shape, b.dtype), batches)
  t = time.perf_counter()
  compiled = jitted.lower(state, batches).compile()
  out = {'compile s': time.perf_counter() - t, **program_size(compiled)}
  serialized = serialize(compiled)
  out['MB'] = len(serialized[0]) / 1e6
  # Loaded in a new process, as a run reads the cache: in the process that compiled it
  # the same load took 12.1 s instead of 8.3-8.8 s (the reduced VGG, every probe).
  with tempfile.NamedTemporaryFile(suffix='.pkl') as f:
    pickle.dump(serialized, f)
    f.flush()
    cmd = [sys.executable, __file__, f'--config={config_spec}', f'--load={f.name}']
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    sys.exit(f'loading failed:\n{done.stderr[-2000:]}')
  out['load s'] = float(done.stdout.split()[-1])
  return out


def load_median(path: str) -> float:
  """Median time of 3 loads of the serialized executable in ``path`` after one, seconds."""
  import jax
  from jax.experimental.serialize_executable import deserialize_and_load

  from timing import median_time

  with open(path, 'rb') as f:
    payload, in_tree, out_tree = pickle.load(f)
  jax.devices()  # the backend started before the clock does
  return median_time(deserialize_and_load, payload, in_tree, out_tree, repeats=3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/sweeps/local_vgg.py:bn_lr0.1_seed0')
  parser.add_argument('--load', help=argparse.SUPPRESS)  # the new process that loads
  args = parser.parse_args()
  path = args.config.partition(':')[0]
  if not pathlib.Path(path).exists() and (ROOT / path).exists():
    args.config = str(ROOT / args.config)  # relative to the repository, as compile_cache.py
  try:
    config = config_lib.load_config_file(args.config)
  except config_lib.ConfigError as e:
    sys.exit(f'cache_read.py: {e}')
  xla_flags.apply(config.model)  # before jax starts its backend, as bnjax.main does
  if args.load:
    print(load_median(args.load))
    return
  probes = config.probes
  variants = {'no probe': [], **{name: [name] for name in probes}, 'every probe': list(probes)}
  print(f'{args.config}: the train chunk ({config.steps_per_call} steps per call)')
  header = None
  for label, names in variants.items():
    config.probes = {name: probes[name] for name in names}
    row = measure(config, args.config)
    if header is None:
      header = f'{"probes":18s}' + ''.join(f'{k:>14s}' for k in row)
      print(header)
    print(
      f'{label:18s}'
      + ''.join(f'{v:14d}' if isinstance(v, int) else f'{v:14.2f}' for v in row.values())
    )


if __name__ == '__main__':
  main()
