r"""Entry point: ``python -m bnjax.main --config=configs/<name>.py[:ARG] --workdir=DIR``.

ARG: ``local`` (the laptop-size run) and/or ``FIELD=VALUE`` pairs for top-level fields,
comma-separated, e.g. ``--config=configs/vgg_bn.py:local,num_steps=100`` (see
``bnjax.config_lib``). Overrides: ``--config.<field>=<value>``, e.g.
``--config.learning_rate=0.5`` or ``--config.probes.ics.every=10`` or
``--config.dataset=imagefolder:../shared/data/cifar10-jpeg.tar.gz``. Rerunning the
same command resumes from the latest checkpoint in DIR.

Multi-host (TPU VM pods, GPU clusters): ``--multihost`` calls
``jax.distributed.initialize()`` first (on Cloud TPU it needs no arguments; elsewhere set
``--coordinator_address``, ``--num_processes``, ``--process_id``).

Exit status: 0 done or diverged (see DIR/status.json), 2 bad config, 3 workdir in use by
another live process, 75 preempted (SIGTERM or SIGHUP), 130 interrupted (Ctrl-C), 1 any
other failure (a full disk included). After 75, 130 or 1, rerunning the same command
resumes. The signals' handlers are installed first thing (``bnjax.interruptions``).

Compiled programs are kept in JAX's persistent compilation cache (``config.compilation_cache``:
'auto', a directory or 'off'; ``JAX_COMPILATION_CACHE_DIR``, if set, wins, empty for off),
with the train and initialisation programs as traced (``bnjax.program_cache``), so a rerun,
a resume or another seed of the same config skips tracing them and most of their compilation.
"""

import errno
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnjax import xla_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics and checkpoints.')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize().')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
_HEARTBEAT = flags.DEFINE_integer(
  'heartbeat_timeout_seconds',
  120,
  'Multi-host: a process silent this long counts as lost; every other process then '
  'exits with an error naming it (so a dead host never leaves the rest waiting).',
)
flags.mark_flags_as_required(['config', 'workdir'])
EXIT_WORKDIR_IN_USE = 3
CACHE_SUBDIR = 'jax-compilation'  # under the bnjax cache dir ($BNJAX_CACHE or ~/.cache/bnjax)
# Programs whose compilation took at least this long are written to the cache: every
# train chunk and probe program; not the many small ones (initialisation, evaluation).
CACHE_MIN_COMPILE_SECONDS = 0.5


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad config argument or override reported in one line.

  ml_collections raises a bare AttributeError (a 40-line traceback) for an override of a
  field the config lacks, and wraps a ConfigError of the config file's get_config (e.g.
  ``:num_stpes=5``) in two tracebacks; this prints the message, naming the field and the
  closest valid ones, and exits with status 2 instead.
  """
  try:
    return flags.FLAGS(argv)
  except (AttributeError, flags.IllegalFlagValueError):
    from bnjax import config_lib  # pylint: disable=g-import-not-at-top

    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    overrides = [a[len('--config.') :].split('=', 1)[0] for a in argv if a.startswith('--config.')]
    if spec is None:
      raise
    try:
      config = config_lib.load_config_file(spec)
    except config_lib.ConfigError as e:
      _exit_bad_config(f'config error: {e}')
    for field in overrides:
      if message := config_lib.unknown_override(config, field):
        _exit_bad_config(message)
    raise


def _exit_bad_config(message: str):
  print(f'bnjax: {message}', file=sys.stderr)
  sys.exit(2)


class _QuietLibraries:
  """Drops orbax's INFO lines (several per checkpoint) from the terminal; keeps warnings."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def use_compilation_cache(setting: str) -> str | None:
  """Turns on JAX's persistent compilation cache in this process; returns its directory.

  ``JAX_COMPILATION_CACHE_DIR``, if set, wins (JAX reads it; empty: off). Otherwise
  ``setting`` (config.compilation_cache): 'auto' (``CACHE_SUBDIR`` of the bnjax cache
  dir), a directory, or 'off'. ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``, if set,
  wins over ``CACHE_MIN_COMPILE_SECONDS``. JAX writes entries from process 0 only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from bnjax import image_sources  # pylint: disable=g-import-not-at-top

  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return os.environ['JAX_COMPILATION_CACHE_DIR'] or None
  if setting == 'off':
    return None
  path = (
    os.path.join(image_sources.default_cache_dir(), CACHE_SUBDIR)
    if setting == 'auto'
    else os.path.expanduser(setting)
  )
  jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', CACHE_MIN_COMPILE_SECONDS)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from bnjax import interruptions  # pylint: disable=g-import-not-at-top

  # First thing: a signal during start-up (imports, data, compilation) stops the run at
  # its first step, with a checkpoint, instead of killing it without one.
  with interruptions.StopRequest() as stop:
    try:
      _main(stop)
    except KeyboardInterrupt:
      print(
        'bnjax: stopped at once by a second Ctrl-C; rerun to resume from the last checkpoint',
        file=sys.stderr,
      )
      sys.exit(interruptions.EXIT_INTERRUPTED)


def _main(stop):
  """main's work, with ``stop``'s signal handlers installed."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  xla_flags.apply(_CONFIG.value.get('model'))  # before jax starts its backend, which reads them
  import jax  # pylint: disable=g-import-not-at-top

  if _MULTIHOST.value:
    jax.distributed.initialize(
      _COORDINATOR.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
      heartbeat_timeout_seconds=_HEARTBEAT.value,
    )
  from bnjax import config_lib, data, interruptions, train  # pylint: disable=g-import-not-at-top
  from bnjax import workdir  # pylint: disable=g-import-not-at-top

  logging.info(
    'JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(), jax.devices()
  )
  cache = use_compilation_cache(_CONFIG.value.get('compilation_cache', 'auto'))
  logging.info('persistent compilation cache: %s', cache or 'off')
  try:
    state = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, stop)
  except config_lib.ConfigError as e:
    print(f'bnjax: config error: {e}', file=sys.stderr)
    sys.exit(2)
  except data.DataError as e:
    print(f'bnjax: {e}', file=sys.stderr)
    sys.exit(1)
  except workdir.WorkdirInUse as e:
    print(f'bnjax: {e}', file=sys.stderr)
    sys.exit(EXIT_WORKDIR_IN_USE)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    print(
      f'bnjax: disk full ({e}); status.json says failed; rerun to resume from the last '
      'checkpoint once there is space',
      file=sys.stderr,
    )
    sys.exit(1)
  logging.info('run %s; metrics in %s/metrics.jsonl', state, _WORKDIR.value)
  if state == 'preempted':
    sys.exit(interruptions.EXIT_PREEMPTED)
  if state == 'interrupted':
    sys.exit(interruptions.EXIT_INTERRUPTED)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
