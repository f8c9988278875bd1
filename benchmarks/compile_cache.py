r"""The persistent compilation cache: time to the first step of a run, and its compilation,
with an empty cache and again (the same config; then another seed), in fresh processes.

  python benchmarks/compile_cache.py                      # the DLN (configs/dln_bn.py)
  python benchmarks/compile_cache.py --config=configs/sweeps/local_vgg.py:bn_lr0.1_seed0 \
      --config.num_steps=2                                 # reduced VGG, the paper's probes

Each run is ``python -m bnjax.main`` in a new workdir with ``--config.compilation_cache``
set to one new, empty directory for all three (JAX_COMPILATION_CACHE_DIR is removed from
the runs' environment), which also holds the traced train program
(``bnjax.program_cache``: a second run's tracing is near 0). A run logs ``first step
after T s: compilation C s (tracing, lowering, XLA or cache; N programs from the
persistent cache)`` (``bnjax.metrics_log``); this prints those figures and their ratios
to the first run's. Target (issue 25): the second run's compilation at most 20% of the
first's.
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINE = re.compile(
  r'first step after ([\d.]+) s: compilation ([\d.]+) s \(tracing ([\d.]+), '
  r'lowering ([\d.]+), XLA or cache ([\d.]+); (\d+) programs from the persistent '
  r'cache in ([\d.]+) s'
)
FIELDS = (
  'first step s',
  'compilation s',
  'tracing s',
  'lowering s',
  'XLA or cache s',
  'cache hits',
  'cache read s',
)


def run_once(
  config: str, flags: list[str], workdir: pathlib.Path, cache: pathlib.Path
) -> dict[str, float]:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  cmd = [
    sys.executable,
    '-m',
    'bnjax.main',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.compilation_cache={cache}',
    *flags,
  ]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  match = LINE.search(done.stderr)
  if done.returncode != 0 or not match:
    sys.exit(f'{" ".join(cmd)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
  return dict(zip(FIELDS, map(float, match.groups())))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/dln_bn.py')
  args, flags = parser.parse_known_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    runs = {
      'empty cache': run_once(args.config, flags, tmp / 'a', tmp / 'cache'),
      'again': run_once(args.config, flags, tmp / 'b', tmp / 'cache'),
      'another seed': run_once(args.config, [*flags, '--config.seed=1'], tmp / 'c', tmp / 'cache'),
    }
  first = runs['empty cache']
  print(f'{args.config} {" ".join(flags)}')
  print(
    f'{"run":14s}' + ''.join(f'{f:>16s}' for f in FIELDS) + '  compilation ratio  first-step ratio'
  )
  for name, r in runs.items():
    print(
      f'{name:14s}'
      + ''.join(f'{r[f]:16.1f}' for f in FIELDS)
      + f'{r["compilation s"] / first["compilation s"]:19.2f}'
      f'{r["first step s"] / first["first step s"]:18.2f}'
    )


if __name__ == '__main__':
  main()
