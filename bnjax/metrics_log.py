"""The metrics log: metrics.jsonl lines from the device's metrics, read one call behind.

The training loop ``submit``s each call's metrics as soon as the call is dispatched (device
arrays still being computed); the log then writes the previous call's, so the device never
waits for the host. ``flush`` writes the call held: before a checkpoint and at the end.

A line: step, steps_per_second, examples_per_second, the step's metrics (train_loss,
learning_rate, train_accuracy where defined), ``probe/<name>/<field>`` on the steps the
probe's schedule names, and on a call's first line its ``extra`` (eval_*, data/*).
A training loss that is not finite is a divergence: its line is the last one written.

The first lines written are announced with the time since the process started and the
wall time JAX spent compiling by then (``COMPILE_SPANS``: tracing, lowering, and XLA or
reading the persistent compilation cache), e.g.
``first step after 12.3 s: compilation 9.8 s (tracing 1.2, lowering 0.4, XLA or cache 8.2;
3 programs from the persistent cache in 1.5 s)``; ``benchmarks/compile_cache.py`` reads it.
"""

import collections
import logging
import math
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from bnjax import workdir as workdir_lib

_COMPILE_EVENTS = {
  '/jax/core/compile/jaxpr_trace_duration': 'tracing',
  '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lowering',
  '/jax/core/compile/backend_compile_duration': 'XLA or cache',
}
_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_CACHE_READ_EVENT = '/jax/compilation_cache/cache_retrieval_time_sec'
# (start, end) of every compilation phase JAX reported in this process, by phase; nested
# traces (a jit inside a jit) overlap, so times are unions of these spans.
COMPILE_SPANS: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
CACHE_HITS = [0, 0.0]  # programs read from the persistent compilation cache, seconds
_IMPORTED = time.time()


def _on_span(event: str, start: float, end: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    COMPILE_SPANS[_COMPILE_EVENTS[event]].append((start, end))


def _on_duration(event: str, seconds: float, **_) -> None:
  if event == _CACHE_READ_EVENT:
    CACHE_HITS[1] += seconds


def _on_event(event: str, **_) -> None:
  if event == _CACHE_HIT_EVENT:
    CACHE_HITS[0] += 1


jax.monitoring.register_event_time_span_listener(_on_span)
jax.monitoring.register_event_listener(_on_event)
jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _union(spans: list[tuple[float, float]]) -> float:
  """The length of the union of the intervals ``spans``."""
  total, reach = 0.0, -math.inf
  for start, end in sorted(spans):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


def seconds_since_process_start() -> float:
  """Wall time since this process started (the kernel's start time; Linux)."""
  try:
    ticks = int(pathlib.Path('/proc/self/stat').read_text().rsplit(')', 1)[-1].split()[19])
    boot = next(
      int(l.split()[1])
      for l in pathlib.Path('/proc/stat').read_text().splitlines()
      if l.startswith('btime')
    )
    return time.time() - boot - ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, StopIteration):
    return time.time() - _IMPORTED


def first_step_line() -> str:
  """'first step after T s: compilation C s (...)', from ``COMPILE_SPANS`` so far."""
  phases = ', '.join(f'{p} {_union(COMPILE_SPANS[p]):.1f}' for p in _COMPILE_EVENTS.values())
  total = _union([s for p in _COMPILE_EVENTS.values() for s in COMPILE_SPANS[p]])
  return (
    f'first step after {seconds_since_process_start():.1f} s: compilation {total:.1f} s '
    f'({phases}; {CACHE_HITS[0]} programs from the persistent cache in '
    f'{CACHE_HITS[1]:.1f} s)'
  )


class MetricsLog:
  """Writes one run's metric lines, one call behind; watches for divergence.

  Keeps the run's last finite training loss, ``diverged`` (the step of the first training
  loss that is not finite, then nothing more is written), its count of non-finite probe
  values (a probe that overflows never stops training; the count goes into status.json)
  and the terminal progress line.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    wd: workdir_lib.Workdir,
    probe_fns: dict[str, Any],
    first_line: dict[str, float] | None = None,
  ):
    """``probe_fns``: the run's probes by name (``due(step)``: on its schedule);
    ``first_line``: fields for the first line this log writes (then forgotten)."""
    self.config, self.wd, self.probe_fns = config, wd, probe_fns
    self.last_finite_loss = None
    self.diverged: int | None = None
    self.nonfinite_probe_values: dict[str, int] = {}
    self._first_line = dict(first_line or {})
    self._pending = None  # (first step, device metrics, extra) of the call in flight
    self._last_time, self._last_log = time.time(), 0.0
    self._written_any = False

  def submit(self, first_step: int, device_metrics, extra: dict[str, float]) -> int | None:
    """Holds the metrics of one call and writes those of the call held before it.

    ``device_metrics``: the call's (metrics, probe outputs), each field [k, ...] for
    steps first_step..first_step + k - 1; ``extra``: host floats for its first line.
    Returns ``diverged``.
    """
    previous = self._pending
    self._pending = (first_step, device_metrics, {**self._first_line, **extra})
    self._first_line = {}
    if previous is not None and self.diverged is None:
      self._write(*previous)
    return self.diverged

  def flush(self) -> int | None:
    """Writes the call held, if any (before a checkpoint, at the end); returns ``diverged``."""
    pending, self._pending = self._pending, None
    if pending is not None and self.diverged is None:
      self._write(*pending)
    return self.diverged

  def status_fields(self) -> dict:
    """Fields for the final status.json: the non-finite probe values' count, if any."""
    if not self.nonfinite_probe_values:
      return {}
    logging.warning(
      'non-finite probe values (recorded as NaN/inf in metrics.jsonl): %s',
      self.nonfinite_probe_values,
    )
    return {'nonfinite_probe_values': self.nonfinite_probe_values}

  def _write(self, first_step: int, device_metrics, extra: dict[str, float]) -> None:
    """Writes the lines of steps first_step.. up to the end or the first non-finite loss."""
    metrics, probe_out = jax.device_get(device_metrics)
    now = time.time()
    k = len(metrics['train_loss'])
    sps = k / max(now - self._last_time, 1e-9)
    self._last_time = now
    lines = []
    for i in range(k):
      step = first_step + i
      line = {
        'step': step,
        'steps_per_second': sps,
        'examples_per_second': sps * self.config.batch_size,
      }
      line.update({n: _to_json(v[i]) for n, v in metrics.items()})
      line.update(self._probe_fields(step, probe_out, i))
      if i == 0:
        line.update({n: float(v) for n, v in extra.items()})
      lines.append(line)
      loss = float(metrics['train_loss'][i])
      if not math.isfinite(loss):
        self.diverged = step
        break
      self.last_finite_loss = loss
    self.wd.append_metrics(lines)
    if not self._written_any:
      self._written_any = True
      logging.info('%s', first_step_line())
    if now - self._last_log >= self.config.log_every_seconds or self.diverged is not None:
      self._last_log = now
      self._log_progress(lines[-1], sps)

  def _probe_fields(self, step: int, probe_out: dict, i: int) -> dict:
    """The ``probe/<name>/<field>`` entries of the probes due at ``step`` (row i)."""
    fields = {}
    for name, out in probe_out.items():
      if not self.probe_fns[name].due(step):
        continue
      for field, v in out.items():
        key = f'probe/{name}/{field}'
        fields[key] = _to_json(v[i])
        bad = (
          int(np.size(v[i]) - np.isfinite(v[i]).sum())
          if np.issubdtype(np.asarray(v[i]).dtype, np.floating)
          else 0
        )
        if bad:
          self.nonfinite_probe_values[key] = self.nonfinite_probe_values.get(key, 0) + bad
    return fields

  def _log_progress(self, last: dict, steps_per_second: float) -> None:
    shown = ' '.join(
      f'{n} {last[n]:.4g}'
      for n in ('train_loss', 'train_accuracy', 'eval_loss', 'eval_accuracy')
      if n in last
    )
    logging.info(
      'step %d/%d  %s  (%.1f steps/s)',
      last['step'] + 1,
      self.config.num_steps,
      shown,
      steps_per_second,
    )


def _to_json(x):
  x = np.asarray(x)
  return x.item() if x.ndim == 0 else x.tolist()
