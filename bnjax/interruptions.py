"""Stopping a run early on request: SIGTERM, SIGHUP and Ctrl-C, and their exit statuses.

Each signal lets the step in flight finish; the run then saves a checkpoint, says
'preempted' (SIGTERM, SIGHUP) or 'interrupted' (SIGINT) in status.json, and
``bnjax.main`` exits with ``EXIT_PREEMPTED`` or ``EXIT_INTERRUPTED``. Rerunning the same
command resumes.

SIGHUP (a closed terminal, a dropped ssh connection, a sweep runner passing it on) is a
stop from outside, as a preemption is: it checkpoints, says 'preempted' and exits 75. It
can arrive more than once (from the terminal and from a sweep runner), so a repeat never
stops the run before its checkpoint, as a second Ctrl-C does.

A signal ignored when the handlers are installed stays ignored: ``nohup`` ignores SIGHUP
so that a run outlives its terminal, and a shell script's ``cmd &`` ignores SIGINT (no
Ctrl-C can reach a background job anyway). SIGTERM then still checkpoints.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
from typing import Callable, Sequence

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: rerun the same command to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention: rerun to resume
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopRequest:
  """SIGTERM, SIGHUP and SIGINT (Ctrl-C): finish the step, checkpoint, stop.

  A context manager: its handlers are installed while it is entered (for each of
  ``SIGNALS`` not ignored on entry), and the handlers found on entry are restored on
  exit. A second Ctrl-C stops at once (KeyboardInterrupt). ``final_state``: 'interrupted'
  when the first signal was SIGINT, else 'preempted'.
  """

  def __init__(self):
    self.signum = None  # the first signal received
    self._old = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def final_state(self) -> str:
    return 'interrupted' if self.signum == signal.SIGINT else 'preempted'

  @property
  def signal_name(self) -> str | None:
    return signal.Signals(self.signum).name if self.signum is not None else None

  def should_stop(self, call: int) -> bool:
    """Whether the loop stops before its ``call``-th iteration (0, 1, ... from this start).

    Multi-host runs: ``jax.distributed.initialize`` hands SIGTERM to JAX's preemption
    notifier (it replaces this handler), which tells every process; all stop at the same
    call (``reached_preemption_sync_point``), as their collective programs need. Every
    process must call this at every iteration, and nothing else may pass JAX a counter
    (orbax's save would: ``checkpoints._Manager``).
    """
    if self.signum is None and _reached_preemption_sync_point(call):
      logging.warning('SIGTERM (JAX preemption notice): saving a checkpoint and stopping')
      self.signum = signal.SIGTERM
    return self.requested

  def handler(self, signum, frame):
    del frame
    logging.warning(
      '%s: saving a checkpoint and stopping%s',
      signal.Signals(signum).name,
      ' (Ctrl-C again to stop at once)' if signum == signal.SIGINT else '',
    )
    if self.signum is None:
      self.signum = signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def __enter__(self):
    self._old = _install(self.handler)
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)


def _reached_preemption_sync_point(call: int) -> bool:
  """JAX's multi-host preemption sync (False in a single-process run)."""
  if 'jax' not in sys.modules:  # this module stays JAX-free for bnjax.sweep
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return multihost_utils.reached_preemption_sync_point(call)


# ------------------------------------------------------- a process that starts runs
class Forwarder:
  """SIGTERM, SIGINT and SIGHUP to a process that starts runs (``bnjax.sweep``), passed on
  to every run in flight, each as many times as it arrived.

  The runs are expected in their own session, so that a terminal's Ctrl-C or hangup
  reaches them only through this process, once per signal (a second Ctrl-C then stops them
  at once, as it stops ``bnjax.main``). A context manager, like StopRequest: a signal
  ignored on entry (``nohup``, a script's ``cmd &``) stays ignored, here and in the runs.
  ``received``: the signals so far, in order.
  """

  def __init__(self):
    self.received: list[int] = []
    self._sent: dict[int, int] = {}  # pid -> how many of ``received`` it was sent
    self._old = {}

  def handler(self, signum, frame):
    del frame
    self.received.append(signum)

  def __enter__(self):
    self._old = _install(self.handler)
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)

  def forward(self, procs: Sequence[subprocess.Popen]) -> None:
    """Sends each process the signals received that it was not sent yet."""
    for proc in procs:
      sent = self._sent.get(proc.pid, 0)
      for signum in self.received[sent:]:
        proc.send_signal(signum)
        sent += 1
      self._sent[proc.pid] = sent


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
  """A ``preexec_fn`` for ``subprocess.Popen`` (None off Linux): the child gets SIGTERM,
  so a run checkpoints and stops, when this process dies, even by SIGKILL.

  Linux sends it when the *thread* that forked the child ends: start children from a
  thread that lives as long as the process (the main thread). If this process died
  before the child's prctl took effect, the child stops itself at once. A preexec_fn
  makes subprocess fork: use it in a process without threads (``bnjax.sweep`` never
  starts a JAX backend, whose threads make forking unsafe).
  """
  if not sys.platform.startswith('linux'):
    return None
  prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
  parent = os.getpid()

  def preexec():
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
      os.kill(os.getpid(), signal.SIGTERM)

  return preexec


def _install(handler) -> dict:
  """``handler`` for every signal of SIGNALS not ignored now; {signal: the old handler}."""
  return {s: signal.signal(s, handler) for s in SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
