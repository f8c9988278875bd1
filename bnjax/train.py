"""The training loop: state, jitted data-parallel step, evaluation, probes, checkpoints.

One run = ``train_and_evaluate(config, workdir)``. What it writes to ``workdir``:

  config.json     the resolved config (a rerun with a different config is refused)
  metrics.jsonl   host 0, one JSON object per step: step, train_loss, learning_rate,
                  steps_per_second, train_accuracy / eval_* where defined, probe/*
  events.out.tfevents.*  the same as TensorBoard events (see bnjax.tensorboard)
  lock.json       while the run lives: its pid and host (one run per workdir)
  status.json     {"state": running | done | diverged | preempted | interrupted | failed, ...}
  checkpoints/    orbax, every ``checkpoint_every`` steps; a rerun resumes from the latest

Every quantity on the metrics line of step t is measured at the parameters theta_t,
i.e. after t updates: the training loss on batch t, evaluation, probes.

Data parallelism: one ``Mesh`` axis ``'data'`` over every device of every host. The
batch is sharded along it, the state replicated; ``jax.jit`` inserts the all-reduces,
so BatchNorm statistics are over the global batch. ``bn_stats='per_device'`` splits the
batch into one statistics group per device instead (see ``models.norms``).

Steps run ``steps_per_call`` at a time inside one jitted ``lax.scan``; probes run inside
the same scan under ``lax.cond`` on their schedule, so probing every step stays cheap.
Metrics are read back one call behind the dispatch, so the device never waits for the host.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import signal
import socket
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bnjax import config_lib, data, models, objective as objective_lib, tensorboard
from bnjax import scheduled_probes
from bnjax.models import norms

# Fields a rerun may change without changing the run that the workdir holds.
RESUMABLE_FIELDS = ('num_steps', 'log_every_seconds', 'checkpoint_every', 'eval_every',
                    'max_checkpoints_to_keep', 'eval_batch_size', 'steps_per_call',
                    'data.cache_dir', 'data.tfds_data_dir', 'tensorboard')
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: rerun the same command to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention: rerun to resume
LOCK_FILE = 'lock.json'
COMMIT_MARKER = 'commit_success.txt'


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: updates applied so far
  params: Any
  batch_stats: Any
  opt_state: Any

  @classmethod
  def create(cls, variables: dict, tx: optax.GradientTransformation) -> 'TrainState':
    """Step 0 from a model's ``init`` variables (``batch_stats`` empty if it has none)."""
    params = variables['params']
    return cls(jnp.zeros((), jnp.int32), params, variables.get('batch_stats', {}),
               tx.init(params))


def make_train_step(objective: Callable, tx: optax.GradientTransformation,
                    base_key: jax.Array, learning_rate: float) -> Callable:
  """train_step(state, batch, before_update=None) -> (state, metrics); one SGD update.

  ``before_update(loss, grads)``, if given, runs between the gradient and the update, and
  its result is returned as ``metrics['before_update']``: in-training probes use it to
  share the step's loss and gradient instead of computing them again.
  """

  def train_step(state: TrainState, batch, before_update=None):
    key = objective_lib.noise_key_for_step(base_key, state.step)
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, (new_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch, key)
    metrics = dict(metrics, learning_rate=jnp.asarray(learning_rate, jnp.float32))
    if before_update is not None:
      metrics['before_update'] = before_update(loss, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, new_stats, opt_state), metrics

  return train_step


def _unset(s: jax.ShapeDtypeStruct) -> jax.Array:
  """A probe output on a step where the probe does not run: NaN, or -1 for integers."""
  fill = jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else -1
  return jnp.full(s.shape, fill, s.dtype)


def make_train_chunk(train_step: Callable, probe_fns: dict[str, scheduled_probes.Probe],
                     base_key: jax.Array, scan_train_step: Callable | None = None) -> Callable:
  """chunk(state, batches) -> (state, metrics [k]): k steps in one ``lax.scan`` (k > 1).

  batches: {'inputs': [k, B, ...], ...}. Each probe runs before the update of every step
  its schedule names, on that step's batch, noise key, loss and gradient, under
  ``lax.cond``; on the other steps its outputs are NaN-filled and the host drops them.
  ``scan_train_step``: the same step for use inside the scan (default ``train_step``),
  e.g. built on ``models.for_control_flow(model)``; one step runs ``train_step`` unscanned.
  """
  scan_train_step = scan_train_step or train_step

  def one_step(step_fn, state, batch):
    key = objective_lib.noise_key_for_step(base_key, state.step)

    def run_probes(loss, grads):
      out = {}
      for name, probe in probe_fns.items():
        shapes = jax.eval_shape(probe.fn, state, batch, key, loss, grads)
        skipped = lambda *_, shapes=shapes: jax.tree.map(_unset, shapes)
        due = probe.due_traced(state.step)
        out[name] = jax.lax.cond(due, probe.fn, skipped, state, batch, key, loss, grads)
      return out

    state, metrics = step_fn(state, batch, run_probes if probe_fns else None)
    probe_out = metrics.pop('before_update', {})
    return state, (metrics, probe_out)

  def chunk(state, batches):
    if batches['inputs'].shape[0] == 1:
      # No scan for one step: outside control flow XLA:CPU runs its own, faster,
      # convolutions (see models.common.use_im2col).
      state, out = one_step(train_step, state, jax.tree.map(lambda b: b[0], batches))
      return state, jax.tree.map(lambda a: a[None], out)
    return jax.lax.scan(functools.partial(one_step, scan_train_step), state, batches)

  return chunk


# ---------------------------------------------------------------------- workdir files
class Workdir:
  """The files of one run. Only host 0 writes metrics and status."""

  def __init__(self, path: str, tensorboard_mode: str = 'off'):
    self.path = pathlib.Path(path)
    self.is_writer = jax.process_index() == 0
    self.tensorboard_mode = tensorboard_mode
    self.events = None  # TensorBoard writer, see open_events

  def write_text(self, name: str, text: str) -> None:
    """Writes file ``name`` whole (host 0 only). Atomic: a reader never sees it half
    written, such as another host checking config.json while a resumed run rewrites it."""
    if not self.is_writer:
      return
    tmp = self.path / f'.{name}.tmp'
    tmp.write_text(text)
    os.replace(tmp, self.path / name)

  def write_json(self, name: str, obj: dict) -> None:
    self.write_text(name, json.dumps(obj, indent=1, sort_keys=True) + '\n')

  def set_status(self, state: str, **fields) -> None:
    self.write_json('status.json', dict(state=state, time=time.time(), **fields))

  def set_final_status(self, state: str, **fields) -> None:
    """``set_status`` on the way out of a failed run: a write that fails (a full disk)
    is logged, never raised over the error that ended the run."""
    try:
      self.set_status(state, **fields)
    except OSError as e:
      logging.error('cannot write %s/status.json (%s); it may still say running', self.path, e)

  @contextlib.contextmanager
  def lock(self):
    """Holds ``lock.json`` (pid, host) while the run lives; only process 0 takes it.

    Raises WorkdirInUse if a live process holds it. A lock left by a process that no
    longer runs on this host is taken over; one held from another host is obeyed (its
    liveness cannot be checked from here), and the message says how to clear it.
    """
    if not self.is_writer:
      yield
      return
    path = self.path / LOCK_FILE
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'since': time.time()}
    # Written whole, then linked into place: link fails if the lock exists, and a reader
    # never sees a half-written lock.
    tmp = self.path / f'.{LOCK_FILE}.{me["host"]}.{me["pid"]}'
    tmp.write_text(json.dumps(me))
    try:
      while True:
        try:
          os.link(tmp, path)
          break
        except FileExistsError:
          holder = _read_json(path)
          if holder is not None and not _lock_holder_gone(holder):
            since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))
            raise WorkdirInUse(
                f'{self.path} is in use by process {holder.get("pid")} on '
                f'{holder.get("host")} (since {since}); if that process is gone, delete {path}'
            ) from None
          logging.warning('taking over %s from %s, which no longer runs', path, holder)
          path.unlink(missing_ok=True)
    finally:
      tmp.unlink(missing_ok=True)
    try:
      yield
    finally:
      if _read_json(path) == me:
        path.unlink(missing_ok=True)

  def truncate_metrics(self, from_step: int) -> None:
    """Drops metric lines of steps >= from_step (written after the checkpoint resumed)."""
    f = self.path / 'metrics.jsonl'
    if not self.is_writer or not f.exists():
      return
    kept = []
    for line in f.read_text().splitlines():
      try:
        if json.loads(line)['step'] < from_step:
          kept.append(line)
      except (ValueError, KeyError):
        pass  # a line cut short by a kill
    tmp = self.path / '.metrics.jsonl.tmp'
    tmp.write_text(''.join(l + '\n' for l in kept))
    os.replace(tmp, f)

  def append_metrics(self, lines: list[dict]) -> None:
    if not self.is_writer or not lines:
      return
    with open(self.path / 'metrics.jsonl', 'a') as f:
      f.write(''.join(json.dumps(l) + '\n' for l in lines))
      f.flush()
    if self.events is not None:
      self.events.write(lines)

  def open_events(self, first_step: int) -> None:
    """Starts TensorBoard events at first_step (hiding an earlier attempt's from there on)."""
    if self.is_writer and self.events is None:
      self.events = tensorboard.make_writer(self.path, self.tensorboard_mode, first_step)

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
      self.events = None


class WorkdirInUse(RuntimeError):
  """Another live process trains in this workdir; the message names it."""


def _read_json(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _lock_holder_gone(holder: dict) -> bool:
  """Whether the process that wrote a lock no longer runs (only decidable on this host)."""
  if holder.get('host') != socket.gethostname():
    return False
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, KeyError, ValueError, TypeError):
    return False
  try:  # a killed process its parent has not reaped yet (a zombie) is gone too
    stat = pathlib.Path(f'/proc/{int(holder["pid"])}/stat').read_text()
    return stat.rsplit(')', 1)[-1].split()[0] == 'Z'
  except OSError:
    return False


def _to_json(x):
  x = np.asarray(x)
  return x.item() if x.ndim == 0 else x.tolist()


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that holds a run of a different config (before any work)."""
  f = pathlib.Path(workdir) / 'config.json'
  if not f.exists():
    return
  saved = json.loads(f.read_text())
  current = json.loads(config.to_json())
  defaults = json.loads(config_lib.base().to_json())
  differing = [k for k in config_lib.differing_fields(saved, current) if k not in
               RESUMABLE_FIELDS and not _new_field_at_default(k, saved, current, defaults)]
  if differing:
    raise config_lib.ConfigError(
        f'{workdir} holds a run of a different config (fields differ: {", ".join(differing)}); '
        'use another --workdir or the same config')


def _new_field_at_default(field: str, saved: dict, current: dict, defaults: dict) -> bool:
  """A field added to bnjax after the run started, set to its default: not a change."""
  def get(d, keys):
    for key in keys:
      if not isinstance(d, dict) or key not in d:
        return '<absent>'
      d = d[key]
    return d
  keys = field.split('.')
  return get(saved, keys) == '<absent>' and get(current, keys) == get(defaults, keys) != '<absent>'


# ------------------------------------------------------------------------ checkpoints
def _restore_latest(mgr: ocp.CheckpointManager, abstract_state: TrainState) -> TrainState | None:
  """Restores the newest readable checkpoint; falls back past damaged ones with a warning."""
  mgr.reload()
  steps = sorted(mgr.all_steps(), reverse=True)
  for step in steps:
    # orbax (0.12) writes this marker into a step directory as its last act of a save;
    # a directory without it was never committed, whatever else it holds.
    if not (pathlib.Path(mgr.directory) / str(step) / COMMIT_MARKER).exists():
      logging.warning('checkpoint at step %d has no %s (never committed); trying an older one',
                      step, COMMIT_MARKER)
      continue
    try:
      state = mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      logging.info('resumed from checkpoint at step %d', step)
      return state
    except Exception as e:  # orbax raises many types for damaged files
      logging.warning('checkpoint at step %d cannot be read (%s: %s); trying an older one',
                      step, type(e).__name__, (str(e).splitlines() or [''])[0][:200])
  if steps:
    raise RuntimeError(
        f'checkpoints exist in {mgr.directory} (steps {steps}) but none can be read; '
        'refusing to train from scratch over them: move them away to start afresh')
  return None


# ------------------------------------------------------------------------------- run
class _StopRequest:
  """SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, checkpoint, stop.

  A second Ctrl-C stops at once (KeyboardInterrupt). ``final_state``: 'preempted' for
  SIGTERM, 'interrupted' for SIGINT.
  """

  def __init__(self):
    self.signum = None

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


def data_mesh() -> jax.sharding.Mesh:
  """One 'data' axis over every device of every host, sharding left to the compiler."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def build_model(config: ml_collections.ConfigDict, num_classes: int | None) -> nn.Module:
  return models.from_config(config, num_classes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final state name.

  Raises ConfigError before touching ``workdir`` when the config cannot run, and
  WorkdirInUse when another live process holds it. However the run ends (an exception,
  a full disk, a second Ctrl-C), status.json no longer says 'running'.
  """
  config_lib.validate(config, jax.device_count())
  check_workdir(workdir, config)
  dataset = data.load(config.dataset, seed=config.seed, cache_dir=config.data.cache_dir,
                      tfds_data_dir=config.data.tfds_data_dir,
                      skip_unreadable_images=config.data.skip_unreadable_images)
  model = build_model(config, dataset.num_classes)
  tx = optax.sgd(config.learning_rate, momentum=config.momentum or None)
  probe_fns = scheduled_probes.build(config, model, tx)  # checks probe layers against model

  wd = Workdir(workdir, config.tensorboard)
  wd.path.mkdir(parents=True, exist_ok=True)
  with wd.lock():
    wd.write_text('config.json', config.to_json(indent=1) + '\n')
    try:
      # The manager is closed (its async saves finished) however the run ends.
      with ocp.CheckpointManager(
          (wd.path / 'checkpoints').absolute(),
          options=ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints_to_keep,
                                               create=True)) as mgr:
        return _run(config, wd, mgr, dataset, model, tx, probe_fns)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, no checkpoint
      wd.set_final_status('interrupted', last_checkpoint=_latest_checkpoint(wd),
                          note='stopped at once by a second Ctrl-C; a rerun resumes from '
                          'the last checkpoint')
      raise
    except Exception as e:
      wd.set_final_status('failed', error=f'{type(e).__name__}: {e}',
                          last_checkpoint=_latest_checkpoint(wd))
      raise
    finally:
      wd.close()


def _latest_checkpoint(wd: Workdir) -> int | None:
  """The newest committed checkpoint step in the workdir (None if there is none)."""
  steps = [int(p.parent.name) for p in (wd.path / 'checkpoints').glob(f'*/{COMMIT_MARKER}')
           if p.parent.name.isdigit()]
  return max(steps, default=None)


@dataclasses.dataclass
class _Steps:
  """The jitted functions of a run and its sharding, built once (see ``_compile``)."""
  chunk: Callable  # (state, batches [k, B, ...]) -> (state, (metrics, probe outputs))
  evaluate: Callable  # state -> {'eval_loss', 'eval_accuracy'} (host floats)
  chunk_sharding: NamedSharding


def _initial_state(config, mgr, dataset, model, tx, replicated) -> TrainState:
  """The newest readable checkpoint's state, else a fresh one from ``config.seed``."""

  def init(sample):
    return TrainState.create(objective_lib.init_variables(model, config.seed, sample), tx)

  sample = jnp.zeros((1,) + dataset.train.inputs.shape[1:], jnp.float32)
  abstract_state = jax.eval_shape(init, sample)
  abstract_with_sharding = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract_state)
  state = _restore_latest(mgr, abstract_with_sharding)
  if state is None:
    state = jax.jit(init, out_shardings=jax.tree.map(lambda _: replicated, abstract_state))(sample)
  return state


def _compile(config, mesh, dataset, model, tx, probe_fns, state) -> _Steps:
  replicated = NamedSharding(mesh, P())
  chunk_sharding = NamedSharding(mesh, P(None, 'data'))
  batch_sharding = NamedSharding(mesh, P('data'))
  state_sharding = jax.tree.map(lambda _: replicated, state)
  noise_base = objective_lib.noise_base_key(config.seed)
  # Inside lax.scan (several steps per call): the same model, fast inside control flow.
  train_step, scan_train_step = (
      make_train_step(objective_lib.make_objective(m, config.loss), tx, noise_base,
                      config.learning_rate) for m in (model, models.for_control_flow(model)))
  chunk_fn = jax.jit(make_train_chunk(train_step, probe_fns, noise_base, scan_train_step),
                     in_shardings=(state_sharding, chunk_sharding),
                     out_shardings=(state_sharding, replicated), donate_argnums=0)
  variants = {'': model}  # metric-name suffix -> model evaluated
  if config.norm in norms.NOISY:  # also with the noise at its expectation (Algorithm 1's mean)
    variants['_expected_noise'] = model.clone(
        norm=functools.partial(model.norm, eval_noise='expectation'))
  eval_fns = {suffix: jax.jit(objective_lib.make_eval_step(m, config.loss),
                              in_shardings=(replicated, replicated, batch_sharding),
                              out_shardings=replicated) for suffix, m in variants.items()}

  def evaluate(state) -> dict[str, float]:
    if dataset.test is None:
      return {}
    totals = {suffix: np.zeros(3) for suffix in eval_fns}
    for local in data.local_eval_batches(dataset.test, config.eval_batch_size):
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in local.items()}
      for suffix, eval_fn in eval_fns.items():
        totals[suffix] += np.asarray(
            jax.device_get(eval_fn(state.params, state.batch_stats, batch)))
    out = {}
    for suffix, t in totals.items():
      out[f'eval_loss{suffix}'] = t[0] / t[2]
      if config.loss == 'cross_entropy':
        out[f'eval_accuracy{suffix}'] = t[1] / t[2]
    return out

  return _Steps(chunk_fn, evaluate, chunk_sharding)


class _MetricsLog:
  """Turns one call's device metrics into metrics.jsonl lines; watches for divergence.

  Keeps the run's last finite training loss, its count of non-finite probe values (a
  probe that overflows never stops training; the count goes into status.json) and the
  terminal progress line.
  """

  def __init__(self, config, wd: Workdir, probe_fns: dict[str, scheduled_probes.Probe]):
    self.config, self.wd, self.probe_fns = config, wd, probe_fns
    self.last_finite_loss = None
    self.nonfinite_probe_values: dict[str, int] = {}
    self.last_time, self.last_log = time.time(), 0.0

  def flush(self, first: int, device_metrics, extra: dict) -> int | None:
    """Writes the lines of steps first.. ; returns the step of a divergence, if any."""
    metrics, probe_out = jax.device_get(device_metrics)
    now = time.time()
    k = len(metrics['train_loss'])
    sps = k / max(now - self.last_time, 1e-9)
    self.last_time = now
    lines, diverged = [], None
    for i in range(k):
      step = first + i
      line = {'step': step, 'steps_per_second': sps,
              'examples_per_second': sps * self.config.batch_size}
      line.update({n: _to_json(v[i]) for n, v in metrics.items()})
      for name, out in probe_out.items():
        if self.probe_fns[name].due(step):
          for field, v in out.items():
            key = f'probe/{name}/{field}'
            line[key] = _to_json(v[i])
            bad = int(np.size(v[i]) - np.isfinite(v[i]).sum()) if np.issubdtype(
                np.asarray(v[i]).dtype, np.floating) else 0
            if bad:
              self.nonfinite_probe_values[key] = self.nonfinite_probe_values.get(key, 0) + bad
      if i == 0:
        line.update({n: float(v) for n, v in extra.items()})
      lines.append(line)
      loss = float(metrics['train_loss'][i])
      if not math.isfinite(loss):
        diverged = step
        break
      self.last_finite_loss = loss
    self.wd.append_metrics(lines)
    if now - self.last_log >= self.config.log_every_seconds or diverged is not None:
      self.last_log = now
      last = lines[-1]
      shown = ' '.join(f'{n} {last[n]:.4g}' for n in
                       ('train_loss', 'train_accuracy', 'eval_loss', 'eval_accuracy') if n in last)
      logging.info('step %d/%d  %s  (%.1f steps/s)', last['step'] + 1, self.config.num_steps,
                   shown, sps)
    return diverged


def _chunk_length(config, step: int) -> int:
  """Steps in the next call: up to steps_per_call, never past an eval or checkpoint step."""
  k = min(config.steps_per_call, config.num_steps - step)
  for every in (config.eval_every, config.checkpoint_every):
    if every:
      k = min(k, every - step % every)
  return k


def _run(config, wd: Workdir, mgr: ocp.CheckpointManager, dataset: data.Dataset,
         model: nn.Module, tx: optax.GradientTransformation,
         probe_fns: dict[str, scheduled_probes.Probe]) -> str:
  mesh = data_mesh()
  logging.info('process %d/%d, %d local / %d global devices, mesh %s',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), dict(mesh.shape))
  state = _initial_state(config, mgr, dataset, model, tx, NamedSharding(mesh, P()))
  step = int(state.step)
  wd.truncate_metrics(step)
  wd.open_events(step)
  wd.set_status('running', step=step)
  steps = _compile(config, mesh, dataset, model, tx, probe_fns, state)
  log = _MetricsLog(config, wd, probe_fns)
  # Unreadable images left out: recorded on the first line this (re)start writes.
  first_extra = {'data/skipped_images': dataset.skipped_images} if dataset.skipped_images else {}

  pending = None  # (first step, device metrics, eval metrics) of the call in flight
  final, diverged = 'done', None
  with _StopRequest() as stop:
    while step < config.num_steps:
      if stop.requested:
        final = stop.final_state
        break
      k = _chunk_length(config, step)
      extra = steps.evaluate(state) if config.eval_every and step % config.eval_every == 0 else {}
      extra, first_extra = {**first_extra, **extra}, {}
      local = data.local_train_batches(dataset.train, config.batch_size, config.seed, step, k)
      batches = {n: jax.make_array_from_process_local_data(steps.chunk_sharding, v)
                 for n, v in local.items()}
      state, device_metrics = steps.chunk(state, batches)
      # Metrics are read one call behind the dispatch: the device never waits for the host.
      if pending is not None and (diverged := log.flush(*pending)) is not None:
        break
      pending = (step, device_metrics, extra)
      step += k
      if config.checkpoint_every and step % config.checkpoint_every == 0:
        diverged, pending = log.flush(*pending), None  # metrics on disk before the checkpoint
        if diverged is not None:
          break
        mgr.save(step, args=ocp.args.StandardSave(state))
    if diverged is None and pending is not None:
      diverged = log.flush(*pending)
  return _finish(config, wd, mgr, state, step, 'diverged' if diverged is not None else final,
                 diverged, log, steps.evaluate)


def _finish(config, wd, mgr, state, step, final, diverged, log: _MetricsLog, evaluate) -> str:
  """Saves what the final state calls for and writes status.json; returns the state."""
  counts = {}
  if log.nonfinite_probe_values:
    counts['nonfinite_probe_values'] = log.nonfinite_probe_values
    logging.warning('non-finite probe values (recorded as NaN/inf in metrics.jsonl): %s',
                    log.nonfinite_probe_values)
  if final == 'diverged':  # keep the last good checkpoint, save nothing after it
    wd.set_status('diverged', step=diverged, last_finite_loss=log.last_finite_loss,
                  last_checkpoint=mgr.latest_step(), **counts)
    logging.warning('loss is not finite at step %d; stopped (last finite loss %s)',
                    diverged, log.last_finite_loss)
    return final
  if mgr.latest_step() != step:
    mgr.save(step, args=ocp.args.StandardSave(state))
  if final in ('preempted', 'interrupted'):
    mgr.wait_until_finished()
    wd.set_status(final, step=step, **counts)
    return final
  final_metrics = evaluate(state)
  if final_metrics:
    wd.append_metrics([{'step': step, **{n: float(v) for n, v in final_metrics.items()}}])
  wd.set_status('done', step=step, **{n: float(v) for n, v in final_metrics.items()}, **counts)
  return final
