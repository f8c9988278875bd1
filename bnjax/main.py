r"""Entry point: ``python -m bnjax.main --config=configs/<name>.py[:local] --workdir=DIR``.

Overrides: ``--config.<field>=<value>``, e.g. ``--config.learning_rate=0.5`` or
``--config.dataset=imagefolder:../shared/data/cifar10-jpeg.tar.gz``. Rerunning the
same command resumes from the latest checkpoint in DIR.

Multi-host (TPU VM pods, GPU clusters): ``--multihost`` calls
``jax.distributed.initialize()`` first (on Cloud TPU it needs no arguments; elsewhere set
``--coordinator_address``, ``--num_processes``, ``--process_id``).

Exit status: 0 done or diverged (see DIR/status.json), 2 bad config, 75 preempted
(rerun to resume), 1 any other failure.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics and checkpoints.')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize().')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Drops orbax's INFO lines (several per checkpoint) from the terminal; keeps warnings."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if _MULTIHOST.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from bnjax import config_lib, train  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    state = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f'bnjax: config error: {e}', file=sys.stderr)
    sys.exit(2)
  logging.info('run %s; metrics in %s/metrics.jsonl', state, _WORKDIR.value)
  if state == 'preempted':
    sys.exit(train.EXIT_PREEMPTED)


if __name__ == '__main__':
  app.run(main)
