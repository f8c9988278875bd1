"""A run's checkpoints: orbax's manager as runs use it, and restoring the newest readable one.

They live in ``workdir/checkpoints/<step>/`` (orbax's layout), every ``checkpoint_every``
steps, the newest ``max_checkpoints_to_keep`` kept. A step directory counts once orbax
has written ``COMMIT_MARKER`` into it; a damaged newest checkpoint is passed over for an
older intact one, and a run whose checkpoints are all unreadable refuses to start afresh.
"""

import logging
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from bnjax import workdir as workdir_lib

DIRECTORY = workdir_lib.CHECKPOINTS_DIR
COMMIT_MARKER = workdir_lib.COMMIT_MARKER


class _Manager(ocp.CheckpointManager):
  """orbax's manager, leaving JAX's multi-host preemption sync to the training loop.

  JAX's sync point is the fastest process's last counter + 1, so each process must pass
  one counter sequence (the loop's call index, ``StopRequest.should_stop``). orbax's save
  passes the step too (``reached_preemption(step)``): a SIGTERM just after the save at
  step 100 set the sync point to call 101, 1,010 steps on at 10 steps a call, or never.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


def manager(workdir: str | pathlib.Path, max_to_keep: int | None) -> ocp.CheckpointManager:
  """The manager of ``workdir``'s checkpoints; closing it waits for its saves to finish."""
  return _Manager(
    (pathlib.Path(workdir) / DIRECTORY).absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
  )


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Starts saving ``state`` as the checkpoint of ``step`` (orbax finishes it in the
  background)."""
  mgr.save(step, args=ocp.args.StandardSave(state))


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
  """Restores the newest readable checkpoint; falls back past damaged ones with a warning.

  ``abstract_state``: the state's tree of ``jax.ShapeDtypeStruct`` with shardings.
  Returns None when there is no checkpoint; raises RuntimeError when there are some but
  none can be read (training from scratch would write over them).
  """
  mgr.reload()
  steps = sorted(mgr.all_steps(), reverse=True)
  for step in steps:
    # orbax (0.12) writes this marker into a step directory as its last act of a save;
    # a directory without it was never committed, whatever else it holds.
    if not (pathlib.Path(mgr.directory) / str(step) / COMMIT_MARKER).exists():
      logging.warning(
        'checkpoint at step %d has no %s (never committed); trying an older one',
        step,
        COMMIT_MARKER,
      )
      continue
    try:
      state = mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      logging.info('resumed from checkpoint at step %d', step)
      return state
    except Exception as e:  # orbax raises many types for damaged files
      logging.warning(
        'checkpoint at step %d cannot be read (%s: %s); trying an older one',
        step,
        type(e).__name__,
        (str(e).splitlines() or [''])[0][:200],
      )
  if steps:
    raise RuntimeError(
      f'checkpoints exist in {mgr.directory} (steps {steps}) but none can be read; '
      'refusing to train from scratch over them: move them away to start afresh'
    )
  return None


def latest_committed_step(workdir: str | pathlib.Path) -> int | None:
  """The newest committed checkpoint step in ``workdir`` (None if there is none)."""
  return workdir_lib.latest_checkpoint(workdir)
