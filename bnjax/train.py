"""The training loop: state, jitted data-parallel step, the scan chunk, and the run.

One run = ``train_and_evaluate(config, workdir)``. It writes config.json, metrics.jsonl
(host 0, one JSON object per step: step, train_loss, learning_rate, steps_per_second,
train_accuracy / eval_* where defined, probe/*), status.json, lock.json and checkpoints/
into ``workdir``: see ``bnjax.workdir`` for the files, ``bnjax.checkpoints`` for
checkpoints and resuming, ``bnjax.metrics_log`` for the metric lines and divergence,
``bnjax.interruptions`` for SIGTERM and Ctrl-C.

Every quantity on the metrics line of step t is measured at the parameters theta_t,
i.e. after t updates: the training loss on batch t, evaluation (``bnjax.evaluation``), probes.

Data parallelism: one ``Mesh`` axis ``'data'`` over every device of every host. The
batch is sharded along it, the state replicated; ``jax.jit`` inserts the all-reduces,
so BatchNorm statistics are over the global batch. ``bn_stats='per_device'`` splits the
batch into one statistics group per device instead (see ``models.norms``).

Steps run ``steps_per_call`` at a time inside one jitted ``lax.scan``; probes run inside
the same scan under ``lax.cond`` on their schedule, so probing every step stays cheap.
Metrics are read back one call behind the dispatch, so the device never waits for the host.
"""

import dataclasses
import functools
import json
import logging
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

from bnjax import checkpoints, config_lib, data, evaluation, interruptions, metrics_log, models
from bnjax import objective as objective_lib, program_cache, scheduled_probes
from bnjax import workdir as workdir_lib


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
    return cls(jnp.zeros((), jnp.int32), params, variables.get('batch_stats', {}), tx.init(params))


def make_train_step(
  objective: Callable, tx: optax.GradientTransformation, learning_rate: float
) -> Callable:
  """train_step(state, batch, key, before_update=None) -> (state, metrics); one SGD update.

  key: this step's noise key (``objective.noise_key_for_step``; noisy BN draws from it).
  ``before_update(loss, grads)``, if given, runs between the gradient and the update, and
  its result is returned as ``metrics['before_update']``: in-training probes use it to
  share the step's loss and gradient instead of computing them again.
  """

  def train_step(state: TrainState, batch, key: jax.Array, before_update=None):
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


def make_train_chunk(
  train_step: Callable,
  probe_fns: dict[str, scheduled_probes.Probe],
  seed: jax.Array,
  scan_train_step: Callable | None = None,
) -> Callable:
  """chunk(state, batches) -> (state, metrics [k]): k steps in one ``lax.scan`` (k > 1).

  batches: {'inputs': [k, B, ...], ...}. seed: the run's seed, int32 [] (traced under jit:
  runs that differ only in their seed share the program); each step's noise key comes
  from it (``objective.noise_key_for_step``) and goes to the step and its probes. Each
  probe runs before the update of every step its schedule names, on that step's batch,
  noise key, loss and gradient, under ``lax.cond``; on the other steps its outputs are
  NaN-filled and the host drops them.
  ``scan_train_step``: the same step for use inside the scan (default ``train_step``),
  e.g. built on ``models.for_control_flow(model)``; one step runs ``train_step`` unscanned.
  """
  scan_train_step = scan_train_step or train_step
  base_key = objective_lib.noise_base_key(seed)

  def one_step(step_fn, state, batch):
    key = objective_lib.noise_key_for_step(base_key, state.step)

    def run_probes(loss, grads):
      out = {}
      for name, probe in probe_fns.items():
        # Jitted, the probe is traced once: eval_shape's trace is reused by lax.cond.
        fn = jax.jit(probe.fn)
        args = (state, batch, key, loss, grads, seed)
        shapes = jax.eval_shape(fn, *args)
        skipped = lambda *_, shapes=shapes: jax.tree.map(_unset, shapes)
        due = probe.due_traced(state.step)
        out[name] = jax.lax.cond(due, fn, skipped, *args)
      return out

    state, metrics = step_fn(state, batch, key, run_probes if probe_fns else None)
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


# ------------------------------------------------------------------------------- run
@dataclasses.dataclass(frozen=True)
class Run:
  """What one run trains with, built once by ``train_and_evaluate``."""

  config: ml_collections.ConfigDict
  workdir: workdir_lib.Workdir
  checkpoint_manager: ocp.CheckpointManager
  dataset: data.Dataset
  model: nn.Module
  tx: optax.GradientTransformation
  probe_fns: dict[str, scheduled_probes.Probe]
  mesh: jax.sharding.Mesh
  stop: interruptions.StopRequest  # its signals end the loop after the call in flight


def data_mesh() -> jax.sharding.Mesh:
  """One 'data' axis over every device of every host, sharding left to the compiler."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def build_model(config: ml_collections.ConfigDict, num_classes: int | None) -> nn.Module:
  return models.from_config(config, num_classes)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, stop: interruptions.StopRequest | None = None
) -> str:
  """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final state name.

  Raises ConfigError before touching ``workdir`` when the config cannot run, and
  WorkdirInUse when another live process holds it. However the run ends (an exception,
  a full disk, a second Ctrl-C), status.json no longer says 'running'. ``stop``: the
  entered StopRequest whose signals stop the run (``bnjax.main`` enters one first thing,
  so that a signal during start-up is not lost); by default one is entered here.
  """
  if stop is None:
    with interruptions.StopRequest() as stop:
      return train_and_evaluate(config, workdir, stop)
  config_lib.validate(config, jax.device_count())
  workdir_lib.check_workdir(workdir, config)
  dataset = data.load(
    config.dataset,
    seed=config.seed,
    cache_dir=config.data.cache_dir,
    tfds_data_dir=config.data.tfds_data_dir,
    skip_unreadable_images=config.data.skip_unreadable_images,
  )
  model = build_model(config, dataset.num_classes)
  tx = optax.sgd(config.learning_rate, momentum=config.momentum or None)
  probe_fns = scheduled_probes.build(config, model, tx)  # checks probe layers against model

  wd = workdir_lib.Workdir(workdir, config.tensorboard, is_writer=jax.process_index() == 0)
  wd.path.mkdir(parents=True, exist_ok=True)
  with wd.lock():
    wd.write_text(workdir_lib.CONFIG_FILE, config.to_json(indent=1) + '\n')
    try:
      # The manager is closed (its async saves finished) however the run ends.
      with checkpoints.manager(wd.path, config.max_checkpoints_to_keep) as mgr:
        return _run(Run(config, wd, mgr, dataset, model, tx, probe_fns, data_mesh(), stop))
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, no checkpoint
      wd.set_final_status(
        'interrupted',
        last_checkpoint=checkpoints.latest_committed_step(wd.path),
        note='stopped at once by a second Ctrl-C; a rerun resumes from the last checkpoint',
      )
      raise
    except Exception as e:
      wd.set_final_status(
        'failed',
        error=f'{type(e).__name__}: {e}',
        last_checkpoint=checkpoints.latest_committed_step(wd.path),
      )
      raise
    finally:
      wd.close()


@dataclasses.dataclass(frozen=True)
class _Steps:
  """The jitted functions of a run and its sharding, built once (see ``_compile``)."""

  chunk: Callable  # (state, batches [k, B, ...], seed) -> (state, (metrics, probes))
  seed: jax.Array  # int32 [], the run's seed: an argument, so seeds share the program
  evaluate: Callable  # state -> {'eval_loss', 'eval_accuracy'} (host floats)
  chunk_sharding: NamedSharding


def _initial_state(run: Run, seed: jax.Array) -> TrainState:
  """The newest readable checkpoint's state, else a fresh one from ``seed`` (int32 [],
  ``config.seed`` on every device)."""
  replicated = NamedSharding(run.mesh, P())

  def init(seed, sample):  # the seed an argument: seeds share the compiled program
    return TrainState.create(objective_lib.init_variables(run.model, seed, sample), run.tx)

  # As the train chunk: a rerun reads init's traced program back instead of tracing the
  # model's initialisers again (bnjax.program_cache), here and in eval_shape.
  init_fn = _kept_jit(
    init, run, in_shardings=(replicated, replicated), out_shardings=replicated, name='init'
  )
  sample = _replicated(run, np.zeros((1,) + run.dataset.train.inputs.shape[1:], np.float32))
  abstract_state = jax.eval_shape(init_fn, seed, sample)
  abstract_with_sharding = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract_state
  )
  state = checkpoints.restore_latest(run.checkpoint_manager, abstract_with_sharding)
  return init_fn(seed, sample) if state is None else state


def _compile(run: Run, state: TrainState, seed: jax.Array) -> _Steps:
  config, model = run.config, run.model
  replicated = NamedSharding(run.mesh, P())
  chunk_sharding = NamedSharding(run.mesh, P(None, 'data'))
  state_sharding = jax.tree.map(lambda _: replicated, state)

  # Inside lax.scan (several steps per call): the same model, fast inside control flow.
  train_step, scan_train_step = (
    make_train_step(objective_lib.make_objective(m, config.loss), run.tx, config.learning_rate)
    for m in (model, models.for_control_flow(model))
  )

  def chunk(state, batches, seed):
    # The seed is an argument, not a constant of the program: runs that differ only in
    # their seed compile the same program (one persistent compilation cache entry).
    return make_train_chunk(train_step, run.probe_fns, seed, scan_train_step)(state, batches)

  # Traced once per machine: a rerun, a resume or another seed reads the lowered program
  # back (bnjax.program_cache) and the compiled one from JAX's persistent cache.
  chunk_fn = _kept_jit(
    chunk,
    run,
    in_shardings=(state_sharding, chunk_sharding, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
    name='chunk',
  )
  evaluate = evaluation.make_evaluate(config, model, run.dataset.test, run.mesh)
  return _Steps(chunk_fn, seed, evaluate, chunk_sharding)


def _kept_jit(fn: Callable, run: Run, **how) -> Callable:
  """``program_cache.jit(fn, **how)`` in the run's compilation cache, keyed by its config."""
  directory = jax.config.jax_compilation_cache_dir or None
  return program_cache.jit(fn, key=_program_key(run.config), directory=directory, **how)


def _replicated(run: Run, value: np.ndarray) -> jax.Array:
  """``value``, the same on every host, placed on every device of every host."""
  return jax.make_array_from_process_local_data(NamedSharding(run.mesh, P()), value, value.shape)


def _program_key(config: ml_collections.ConfigDict) -> str:
  """What the traces of the train chunk and the initialisation read from the config: all
  of it but the seed (an argument of both programs) and where the compilation cache is."""
  fields = json.loads(config.to_json_best_effort(sort_keys=True))
  for field in ('seed', 'compilation_cache'):
    fields.pop(field, None)
  return json.dumps(fields, sort_keys=True)


def _chunk_length(config, step: int) -> int:
  """Steps in the next call: up to steps_per_call, never past an eval or checkpoint step."""
  k = min(config.steps_per_call, config.num_steps - step)
  for every in (config.eval_every, config.checkpoint_every):
    if every:
      k = min(k, every - step % every)
  return k


def _run(run: Run) -> str:
  """Trains from the newest checkpoint (or step 0) until the run ends, saves what its end
  calls for and writes status.json; returns the final state's name."""
  wd, mgr = run.workdir, run.checkpoint_manager
  logging.info(
    'process %d/%d, %d local / %d global devices, mesh %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    dict(run.mesh.shape),
  )
  seed = _replicated(run, np.asarray(run.config.seed, np.int32))  # an argument of the programs
  state = _initial_state(run, seed)
  step = int(state.step)
  wd.truncate_metrics(step)
  wd.open_events(step)
  steps = _compile(run, state, seed)
  # Unreadable images left out: recorded on the first line this (re)start writes.
  skipped = run.dataset.skipped_images
  log = metrics_log.MetricsLog(
    run.config, wd, run.probe_fns, first_line={'data/skipped_images': skipped} if skipped else {}
  )
  state, step, final = _train(run, steps, log, state, step)
  counts = log.status_fields()
  if final == 'diverged':  # keep the last good checkpoint, save nothing after it
    wd.set_status(
      'diverged',
      step=log.diverged,
      last_finite_loss=log.last_finite_loss,
      last_checkpoint=mgr.latest_step(),
      **counts,
    )
    logging.warning(
      'loss is not finite at step %d; stopped (last finite loss %s)',
      log.diverged,
      log.last_finite_loss,
    )
    return final
  if mgr.latest_step() != step:
    checkpoints.save(mgr, step, state)
  if final in ('preempted', 'interrupted'):
    mgr.wait_until_finished()
    wd.set_status(final, step=step, last_checkpoint=step, signal=run.stop.signal_name, **counts)
    return final
  final_metrics = {n: float(v) for n, v in steps.evaluate(state).items()}
  if final_metrics:
    wd.append_metrics([{'step': step, **final_metrics}])
  wd.set_status('done', step=step, **final_metrics, **counts)
  return final


def _train(
  run: Run, steps: _Steps, log: metrics_log.MetricsLog, state: TrainState, step: int
) -> tuple[TrainState, int, str]:
  """The loop: from ``step`` to num_steps, ``_chunk_length`` steps a call, evaluating and
  checkpointing on schedule; SIGTERM, SIGHUP or Ctrl-C (``run.stop``) stops it after the
  call in flight. status.json says 'running' with the step, rewritten at least every
  ``status_every_seconds`` and as soon as a checkpoint is committed.

  Returns the state, its step and how the loop ended: 'done', 'preempted',
  'interrupted' or 'diverged' (at ``log.diverged``; nothing is checkpointed after it).
  """
  config = run.config
  final = 'done'
  heartbeat = workdir_lib.Heartbeat(run.workdir, config.status_every_seconds, step)
  call = 0
  while step < config.num_steps:
    if run.stop.should_stop(call):
      final = run.stop.final_state
      break
    call += 1
    k = _chunk_length(config, step)
    extra = steps.evaluate(state) if config.eval_every and step % config.eval_every == 0 else {}
    local = data.local_train_batches(run.dataset.train, config.batch_size, config.seed, step, k)
    batches = {
      n: jax.make_array_from_process_local_data(steps.chunk_sharding, v) for n, v in local.items()
    }
    state, device_metrics = steps.chunk(state, batches, steps.seed)
    # The log writes the previous call's metrics: the device never waits for the host.
    if log.submit(step, device_metrics, extra) is not None:
      break
    step += k
    if config.checkpoint_every and step % config.checkpoint_every == 0:
      if log.flush() is not None:  # metrics on disk before the checkpoint
        break
      checkpoints.save(run.checkpoint_manager, step, state)
      heartbeat.saving(step)
    heartbeat.update(step)
  log.flush()
  return state, step, 'diverged' if log.diverged is not None else final
