"""Stopping a run early on request: SIGTERM (preemption) and Ctrl-C, and their exit statuses.

Either signal lets the step in flight finish; the run then saves a checkpoint, says
'preempted' or 'interrupted' in status.json, and ``bnjax.main`` exits with
``EXIT_PREEMPTED`` or ``EXIT_INTERRUPTED``. Rerunning the same command resumes.
"""

import logging
import signal

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: rerun the same command to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention: rerun to resume


class StopRequest:
  """SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, checkpoint, stop.

  A context manager: its handlers are installed while it is entered. A second Ctrl-C
  stops at once (KeyboardInterrupt). ``final_state``: 'preempted' for SIGTERM,
  'interrupted' for SIGINT.
  """

  def __init__(self):
    self.signum = None
    self._old = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def final_state(self) -> str:
    return 'interrupted' if self.signum == signal.SIGINT else 'preempted'

  def handler(self, signum, frame):
    del frame
    logging.warning('%s: saving a checkpoint and stopping%s', signal.Signals(signum).name,
                    ' (Ctrl-C again to stop at once)' if signum == signal.SIGINT else '')
    self.signum = signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def __enter__(self):
    self._old = {s: signal.signal(s, self.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)
