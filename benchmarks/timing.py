"""The benchmarks' timers: median wall time after a warm-up (compilation) call, alone or
interleaved with a competitor so that both sides see the same machine."""

import statistics
import time

import jax


def median_time(fn, *args, repeats: int) -> float:
  """Median wall time of ``fn(*args)`` over ``repeats`` runs after one warm-up, seconds."""
  jax.block_until_ready(fn(*args))
  return _median_time(lambda: fn(*args), repeats)


def interleaved_times(fns: dict, rounds: int, repeats: int) -> dict[str, list[float]]:
  """Per-round median wall times (seconds) of each no-argument callable in ``fns``.

  After one warm-up call each, every round runs each callable ``repeats`` times in
  turn, so a slow spell of the machine (on this shared 2-core CPU one side's time alone
  has moved by 40% between runs) lands on both sides of a ratio instead of on one.
  Returns {name: [one median per round]}.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  out = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      out[name].append(_median_time(fn, repeats))
  return out


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)
