"""TensorBoard event files beside metrics.jsonl (metrics.jsonl stays the source of truth).

Written through tensorboardX (the ``tensorboard`` extra), a small maintained writer that
needs no TensorFlow. ``config.tensorboard``: 'auto' (default) writes when tensorboardX is
installed, 'on' requires it, 'off' writes nothing. Every scalar metric becomes a scalar
(tag = the metrics.jsonl key); a probe vector of at most ``MAX_ELEMENTS`` values becomes
one scalar per element (``tag/i``), a longer one a histogram. A histogram a probe already
binned, counts ``<tag>/hist`` over bins ``<tag>/edges`` (the activations probe), becomes
one TensorBoard histogram ``<tag>`` of those very bins. Non-finite values are left out
(TensorBoard cannot draw them; metrics.jsonl keeps them).
"""

import importlib.util
import math
import pathlib

import numpy as np

MODES = ('auto', 'on', 'off')
MAX_ELEMENTS = 16


def available() -> bool:
  return importlib.util.find_spec('tensorboardX') is not None


def check_mode(mode: str) -> None:
  """Raises ValueError (one line) for a mode that cannot be honoured."""
  if mode not in MODES:
    raise ValueError(f'config.tensorboard must be one of {MODES}, got {mode!r}')
  if mode == 'on' and not available():
    raise ValueError(
      'config.tensorboard is on but tensorboardX is not installed: pip install -e ".[tensorboard]"'
    )


class EventWriter:
  """Writes metrics lines ({'step': t, key: value, ...}) as TensorBoard events."""

  def __init__(self, logdir: pathlib.Path, purge_step: int | None = None):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    # purge_step: a resumed run rewrites the steps after its checkpoint; TensorBoard then
    # hides the earlier attempt's events from that step on.
    self._writer = SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=10)

  def write(self, lines: list[dict]) -> None:
    for line in lines:
      step = line['step']
      binned = {k[: -len('/hist')] for k in line if k.endswith('/hist')}
      binned &= {k[: -len('/edges')] for k in line if k.endswith('/edges')}
      for tag in binned:
        self._write_binned(tag, line[f'{tag}/hist'], line[f'{tag}/edges'], step)
      done = {'step'} | {f'{tag}/{part}' for tag in binned for part in ('hist', 'edges')}
      for key, value in line.items():
        if key in done:
          continue
        if isinstance(value, (int, float)):
          if math.isfinite(value):
            self._writer.add_scalar(key, value, step)
          continue
        values = np.asarray(value, np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        if 0 < values.size <= MAX_ELEMENTS:
          for i, v in enumerate(values):
            self._writer.add_scalar(f'{key}/{i}', v, step)
        elif values.size:
          self._writer.add_histogram(key, values, step)

  def _write_binned(self, tag: str, counts, edges, step: int) -> None:
    """``counts`` [n] over the bins between ``edges`` [n + 1] as one histogram of those
    bins. (``add_histogram`` of the two vectors would bin counts and edges as if they were
    samples: meaningless, and 10 ms a step for the DLN's three layers.) The values' sum
    and sum of squares, which TensorBoard also takes, are from the bin centres."""
    counts, edges = np.asarray(counts, np.float64), np.asarray(edges, np.float64)
    if not (np.all(np.isfinite(edges)) and np.all(counts >= 0) and counts.sum() > 0):
      return  # a step the probe did not run on
    centres = (edges[:-1] + edges[1:]) / 2
    self._writer.add_histogram_raw(
      tag,
      min=edges[0],
      max=edges[-1],
      num=counts.sum(),
      sum=counts @ centres,
      sum_squares=counts @ centres**2,
      bucket_limits=edges[1:],
      bucket_counts=counts,
      global_step=step,
    )

  def close(self) -> None:
    self._writer.close()


def make_writer(logdir: pathlib.Path, mode: str, first_step: int) -> EventWriter | None:
  """The run's writer from ``first_step`` on, or None when ``mode`` says not to write."""
  check_mode(mode)
  if mode == 'off' or (mode == 'auto' and not available()):
    return None
  return EventWriter(logdir, purge_step=first_step or None)
