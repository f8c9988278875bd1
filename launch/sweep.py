r"""Runs a grid of experiments, one after another, or prints the commands for a scheduler.

  python launch/sweep.py --config=configs/vgg_bn.py --root=runs/lr_sweep \
      --grid='learning_rate=0.05,0.1,0.5' --grid='seed=0,1,2' [--print] [-- extra flags]

Each point gets its own workdir, ``ROOT/<field>=<value>,...``; a point whose
status.json says done is skipped, so rerunning the sweep resumes it. Pass
``--launcher='launch/tpu_vm.sh NAME ZONE'`` to run each point on a TPU VM instead.
"""

import argparse
import itertools
import json
import pathlib
import shlex
import subprocess
import sys


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--root', required=True)
  parser.add_argument('--grid', action='append', default=[], help='field=v1,v2,...')
  parser.add_argument('--launcher', default='', help='prefix taking CONFIG WORKDIR')
  parser.add_argument('--print', action='store_true', help='print the commands only')
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']
  axes = []
  for g in args.grid:
    field, _, values = g.partition('=')
    if not field or not values:
      parser.error(f'--grid takes field=v1,v2,..., got {g!r}')
    axes.append([(field, v) for v in values.split(',')])
  failed = 0
  for point in itertools.product(*axes):
    name = ','.join(f'{f}={v}' for f, v in point) or 'default'
    workdir = pathlib.Path(args.root) / name
    overrides = [f'--config.{f}={v}' for f, v in point] + extra
    if args.launcher:
      cmd = shlex.split(args.launcher) + [args.config, str(workdir)] + overrides
    else:
      cmd = [sys.executable, '-m', 'bnjax.main', f'--config={args.config}',
             f'--workdir={workdir}'] + overrides
    if args.print:
      print(shlex.join(cmd))
      continue
    status = workdir / 'status.json'
    if status.exists() and json.loads(status.read_text()).get('state') == 'done':
      print(f'[sweep] {name}: done already', flush=True)
      continue
    print(f'[sweep] {name}: {shlex.join(cmd)}', flush=True)
    rc = subprocess.call(cmd)
    failed += rc not in (0,)
    print(f'[sweep] {name}: exit {rc}', flush=True)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
