"""``python -m bnjax.plots``: see ``bnjax.plots``."""

import argparse
import sys

from bnjax import plots
from bnjax.plots import numbers


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m bnjax.plots', description=plots.__doc__.strip().splitlines()[0]
  )
  parser.add_argument('figure', help=f'all, numbers, or one of: {" ".join(plots.FIGURES)}')
  parser.add_argument('--workdirs', nargs='+', default=[], help='run workdirs (one figure)')
  parser.add_argument('--root', default='', help='sweep root: every workdir below it')
  parser.add_argument(
    '--out', required=True, help='FILE.png for one figure, DIR for all, FILE.md for numbers'
  )
  parser.add_argument('--dpi', type=int, default=plots.DPI, help='resolution of the PNGs')
  args = parser.parse_args(argv)
  if bool(args.workdirs) == bool(args.root):
    parser.error('give exactly one of --workdirs DIR... and --root SWEEP_ROOT')
  try:
    runs = (
      [plots.load_run(w) for w in args.workdirs] if args.workdirs else plots.find_runs(args.root)
    )
  except FileNotFoundError as e:
    parser.error(str(e))
  if not runs:
    parser.error(f'no workdirs under {args.root}')
  if args.figure == 'numbers':
    with open(args.out, 'w') as f:
      f.write(numbers.markdown(runs))
    print(f'numbers of {len(runs)} runs: {args.out}')
    return 0
  if args.figure == 'all':
    for name, what in plots.draw_all(runs, args.out, args.dpi).items():
      print(f'{name}: {what}')
    print(f'figures in {args.out}/')
    return 0
  if args.figure not in plots.FIGURES:
    parser.error(f'unknown figure {args.figure!r}; valid: all {" ".join(plots.FIGURES)}')
  try:
    plots.draw(args.figure, runs, args.out, args.dpi)
  except plots.NoData as e:
    print(f'bnjax.plots: {e}', file=sys.stderr)
    return 1
  print(f'{args.figure}: {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
