"""``python -m bnjax.analyze``: see ``bnjax.analyze``."""

import argparse
import re
import sys

from bnjax import xla_flags
from bnjax.analyze import layout

EXIT_BAD_REQUEST = 2


class _OneLineParser(argparse.ArgumentParser):
  """argparse whose errors are one line (no usage block): 'bnjax.analyze: <message>'."""

  def error(self, message):
    raise _UsageError(message)


class _UsageError(Exception):
  pass


def _parser() -> argparse.ArgumentParser:
  import bnjax.analyze  # pylint: disable=g-import-not-at-top

  p = _OneLineParser(
    prog='python -m bnjax.analyze',
    allow_abbrev=False,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    description=bnjax.analyze.__doc__,
  )
  p.add_argument('workdirs', nargs='+', help='run workdirs or sweep roots')
  p.add_argument('--probe', required=True, help='a probe of the table (bnjax.analyze.table)')
  p.add_argument('--name', default='', help='output stem, analysis/NAME.jsonl (default: probe)')
  p.add_argument(
    '--steps', default='all', help="'all' (0 and every committed checkpoint) or a list: 0,5000,last"
  )
  p.add_argument('--batches', type=int, default=1, help='training batches evaluated (N)')
  p.add_argument(
    '--data-seed',
    type=int,
    default=None,
    help="order of the evaluation batches (default: the run's seed)",
  )
  p.add_argument('--bn-mode', default='train', choices=('train', 'eval'))
  p.add_argument('--seed', type=int, default=0, help="the probe's random key")
  p.add_argument('--noise-seed', type=int, default=0, help='noisy-BN keys of the batches')
  p.add_argument('--directions', help='loss_surface: see surface_args (default filter)')
  p.add_argument('--grid', help='loss_surface: LO:HI:N (default -1:1:21)')
  p.add_argument('--grid2', help='loss_surface: LO:HI:M for a 2-D surface')
  p.add_argument(
    '--arg',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='a keyword argument of the probe (or --KEY=VALUE)',
  )
  return p


def _probe_items(args, extra: list[str]) -> tuple[tuple[str, str], ...]:
  """The probe's (KEY, VALUE) pairs from --arg KEY=VALUE and the other --KEY=VALUE flags."""
  items = []
  for text in args.arg:
    if '=' not in text:
      raise _UsageError(f'--arg {text!r}: expected KEY=VALUE')
    items.append(tuple(text.split('=', 1)))
  for text in extra:
    if not text.startswith('--') or '=' not in text:
      raise _UsageError(f'unrecognised argument {text!r} (probe arguments: --KEY=VALUE)')
    items.append(tuple(text[2:].split('=', 1)))
  return tuple(items)


def _steps(text: str) -> tuple[str, ...]:
  tokens = tuple(t for t in text.split(',') if t)
  if tokens == ('all',) or (tokens and all(t.isdigit() or t == 'last' for t in tokens)):
    return tokens
  raise _UsageError(f"--steps={text!r}: 'all' or step numbers and 'last', e.g. 0,5000,last")


def _request(args, extra: list[str]):
  """The Request of the parsed flags; AnalysisError or _UsageError in one line."""
  from bnjax.analyze import run, surface_args, table  # pylint: disable=g-import-not-at-top

  table.entry(args.probe)
  if args.name and not re.fullmatch(r'[\w.-]+', args.name):
    raise _UsageError(f'--name={args.name!r}: a file stem (letters, digits, _ . -)')
  if args.batches < 1:
    raise _UsageError(f'--batches must be >= 1, got {args.batches}')
  surface_flags = [f for f in ('directions', 'grid', 'grid2') if getattr(args, f) is not None]
  if surface_flags and args.probe != 'loss_surface':
    raise _UsageError(f'--{surface_flags[0]} is for --probe=loss_surface only')
  args.directions = args.directions or 'filter'
  grids = (surface_args.parse_grid(args.grid or '-1:1:21'),)
  if args.grid2:
    grids += (surface_args.parse_grid(args.grid2, '--grid2'),)
  request = run.Request(
    args.probe,
    args.name or args.probe,
    _probe_items(args, extra),
    _steps(args.steps),
    args.batches,
    args.data_seed,
    args.bn_mode,
    args.seed,
    args.noise_seed,
    args.directions,
    grids,
  )
  if args.probe == 'loss_surface':
    surface_args.parse_directions(request.directions, len(grids))
  return request


def _analyze_all(workdirs, request) -> int:
  """Every workdir in turn; a failing one is reported and the others go on."""
  from bnjax import data  # pylint: disable=g-import-not-at-top
  from bnjax.analyze import run  # pylint: disable=g-import-not-at-top
  from bnjax.analyze.table import AnalysisError  # pylint: disable=g-import-not-at-top

  computed = skipped = 0
  problems = []
  for w in workdirs:
    try:
      outcome = run.analyze_workdir(w, request, echo=lambda m: print(m, flush=True))
    except (AnalysisError, data.DataError) as e:  # e.g. a dataset not prepared here
      print(f'bnjax.analyze: {e}', file=sys.stderr, flush=True)
      problems.append(str(w))
      continue
    computed, skipped = computed + len(outcome.computed), skipped + outcome.skipped
    if outcome.missing or outcome.failed:
      problems.append(str(w))
  print(
    f'{len(workdirs)} workdir(s): {computed} step(s) computed, {skipped} already done'
    + (f'; incomplete: {", ".join(problems)}' if problems else '')
  )
  return 1 if problems else 0


def main(argv=None) -> int:
  try:
    args, extra = _parser().parse_known_args(argv)
    workdirs = layout.find_workdirs(args.workdirs)
    # Before JAX starts its backend (it reads XLA_FLAGS once): the first run's model's.
    xla_flags.apply(layout.read_config(workdirs[0]).get('model'))
    request = _request(args, extra)
    from bnjax.analyze import table  # pylint: disable=g-import-not-at-top

    table.probe_kwargs(request.probe, list(request.items), layout.read_config(workdirs[0]))
  except (_UsageError, FileNotFoundError, ValueError) as e:  # AnalysisError is a ValueError
    print(f'bnjax.analyze: {e}', file=sys.stderr)
    return EXIT_BAD_REQUEST
  return _analyze_all(workdirs, request)


if __name__ == '__main__':
  sys.exit(main())
