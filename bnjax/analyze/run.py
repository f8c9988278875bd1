"""One workdir analysed: the steps to probe, the jitted probe, a jsonl line per step, a figure."""

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np

from bnjax import probes
from bnjax import workdir as workdir_lib
from bnjax.analyze import layout, states, surface_args, table
from bnjax.analyze.table import AnalysisError
from bnjax.probes.fisher import FISHER_LOSSES


@dataclasses.dataclass(frozen=True)
class Request:
  """What the command line asks of every workdir (see ``bnjax.analyze``)."""

  probe: str
  name: str  # the output's stem: analysis/<name>.jsonl and .png
  items: tuple[tuple[str, str], ...] = ()  # the probe's (KEY, VALUE text) arguments
  steps: tuple[str, ...] = ('all',)  # 'all', or step numbers and 'last'
  num_batches: int = 1
  data_seed: int | None = None  # None: the run's seed
  bn_mode: str = 'train'
  seed: int = 0  # the probe's key (random vectors, random directions)
  noise_seed: int = 0  # the noisy-BN keys of the evaluation batches
  directions: str = 'filter'  # loss_surface only (surface_args)
  grids: tuple[tuple[float, float, int], ...] = ((-1.0, 1.0, 21),)


@dataclasses.dataclass
class Outcome:
  computed: list[int] = dataclasses.field(default_factory=list)
  skipped: int = 0  # steps already in the jsonl with these settings
  missing: list[int] = dataclasses.field(default_factory=list)  # listed, not committed
  failed: list[int] = dataclasses.field(default_factory=list)  # unreadable checkpoints


def select_steps(tokens: tuple[str, ...], available: list[int]) -> tuple[list[int], list[int]]:
  """(steps to probe, listed steps with no committed checkpoint) among ``available``."""
  if tokens == ('all',):
    return list(available), []
  wanted = {available[-1] if t == 'last' else int(t) for t in tokens}
  return sorted(wanted & set(available)), sorted(wanted - set(available))


def settings_of(request: Request, config: dict, kwargs: dict) -> dict[str, Any]:
  """Everything a result depends on besides the checkpoint, as the jsonl records it."""
  out = {
    'probe': request.probe,
    'args': kwargs,
    'bn_mode': request.bn_mode,
    'batches': request.num_batches,
    'batch_size': config['batch_size'],
    'data_seed': config['seed'] if request.data_seed is None else request.data_seed,
    'seed': request.seed,
    'noise_seed': request.noise_seed,
  }
  if request.probe == 'loss_surface':
    out.update(surface_args.settings(_specs(request), list(request.grids)))
  return json.loads(json.dumps(out))  # tuples as lists: equal to what the file reads back


def _specs(request: Request) -> list[surface_args.Spec]:
  return surface_args.parse_directions(request.directions, len(request.grids))


def _done_steps(path: pathlib.Path, settings: dict) -> set[int]:
  """Steps the jsonl holds with ``settings``; AnalysisError if it holds other settings."""
  lines = layout.read_lines(path)
  other = [l for l in lines if l.get('settings') != settings]
  if other:
    differing = workdir_lib.differing_fields(other[0].get('settings') or {}, settings)
    raise AnalysisError(
      f'{path} holds results of other settings ({", ".join(differing)} differ); '
      'give --name=OTHER for a file of their own, or move it away to start afresh'
    )
  return {l['step'] for l in lines}


_PROBE_FNS: dict[str, Callable] = {}  # one compile for runs of one model and settings


def probe_fn(run: states.Run, request: Request, kwargs: dict, settings: dict) -> Callable:
  """jitted (params, batch_stats, batches, other_params) -> the probe's fields."""
  c = run.config
  cache_key = json.dumps(
    [
      c.model,
      c.norm,
      c.norm_kwargs.to_dict(),
      c.model_kwargs.to_dict(),
      c.bn_stats,
      c.loss,
      c.dataset,
      settings,
    ],
    sort_keys=True,
  )
  if cache_key in _PROBE_FNS:
    return _PROBE_FNS[cache_key]
  entry = table.entry(request.probe)
  batch_loss = states.batch_loss(run, request.bn_mode)
  key = jax.random.key(request.seed)
  specs = _specs(request) if request.probe == 'loss_surface' else []
  axes = surface_args.grid_axes(list(request.grids))

  per_example = kwargs.get('operator') in FISHER_LOSSES  # 'ef', 'fisher', 'fisher_exact'

  def fn(params, batch_stats, batches, other):
    if per_example:
      loss_fn = states.per_example_loss(
        run, request.bn_mode, batch_stats, batches, jax.random.fold_in(key, 1)
      )
    else:
      loss_fn = probes.dataset_loss(lambda p, b: batch_loss(p, batch_stats, b), batches)
    if specs:
      directions = surface_args.build(specs, loss_fn, params, key, other)
      result = entry.fn(loss_fn, params, directions, axes, **kwargs)
    elif table.takes_key(entry):
      result = entry.fn(loss_fn, params, key, **kwargs)
    else:
      result = entry.fn(loss_fn, params, **kwargs)
    return table.fields_of(entry, result)

  _PROBE_FNS[cache_key] = jax.jit(fn)
  return _PROBE_FNS[cache_key]


def to_json(tree) -> Any:
  """Arrays as JSON numbers and lists (dicts and tuples kept as objects and lists)."""
  return jax.tree.map(lambda x: np.asarray(x).tolist(), tree)


def summary(fields: dict) -> str:
  """A few numbers of a result for the progress line."""
  parts = []
  for name, value in fields.items():
    values = value if isinstance(value, list) else [value]
    if values and all(isinstance(v, (int, float)) for v in values):  # bools too
      shown = ', '.join(f'{float(v):.4g}' for v in values[:3])
      parts.append(f'{name}={shown}' + (', ...' if len(values) > 3 else ''))
  return '  '.join(parts[:4])


@dataclasses.dataclass(frozen=True)
class _Job:
  """One workdir's request, resolved: the probe's arguments and the settings recorded."""

  workdir: pathlib.Path
  request: Request
  kwargs: dict
  settings: dict
  path: pathlib.Path  # analysis/<name>.jsonl


def analyze_workdir(workdir: pathlib.Path, request: Request, echo=print) -> Outcome:
  """Probes every requested step of ``workdir`` not yet in its jsonl; draws its figure.

  Raises AnalysisError (one line) for a request this workdir cannot serve: a bad probe
  argument, a jsonl of other settings, an interpolation target with no checkpoint.
  """
  config = layout.read_config(workdir)
  kwargs = table.probe_kwargs(request.probe, list(request.items), config)
  settings = settings_of(request, config, kwargs)
  job = _Job(workdir, request, kwargs, settings, layout.output(workdir, request.name))
  available = sorted({0, *layout.committed_steps(workdir)})
  steps, missing = select_steps(request.steps, available)
  done = _done_steps(job.path, settings)
  todo = [s for s in steps if s not in done]
  outcome = Outcome(skipped=len(steps) - len(todo), missing=missing)
  for step in missing:
    echo(f'{workdir}: step {step}: no committed checkpoint (yet), left for a later run')
  if todo:
    echo(
      f'{workdir}: {request.probe} at {len(todo)} step(s) '
      f'({outcome.skipped} already in {job.path.name})'
    )
    _compute(job, todo, outcome, echo)
  else:
    echo(f'{workdir}: nothing to do ({outcome.skipped} step(s) already in {job.path.name})')
  png = job.path.with_suffix('.png')
  if (outcome.computed or not png.exists()) and job.path.exists():
    from bnjax.plots import analysis  # pylint: disable=g-import-not-at-top  (matplotlib)

    analysis.draw_file(job.path, png)
    echo(f'{workdir}: figure {png}')
  return outcome


def _compute(job: _Job, todo: list[int], outcome: Outcome, echo) -> None:
  """Probes ``todo`` in order, appending each step's line as soon as it is computed."""
  request = job.request
  run = states.load_run(job.workdir, request.num_batches, request.data_seed, request.noise_seed)
  fn = probe_fn(run, request, job.kwargs, job.settings)
  batches = jax.device_put(run.batches, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  target = (
    surface_args.interpolation_step(_specs(request)) if request.probe == 'loss_surface' else None
  )
  other = None if target is None else states.restore(run, target)[0]
  for i, step in enumerate(todo):
    start = time.time()
    try:
      params, batch_stats = states.restore(run, step)
    except AnalysisError as e:  # e.g. deleted by the training beside us since listed
      echo(str(e))
      outcome.failed.append(step)
      continue
    fields = to_json(jax.device_get(fn(params, batch_stats, batches, other)))
    seconds = time.time() - start
    layout.append_line(
      job.path, {'step': step, **fields, 'seconds': round(seconds, 3), 'settings': job.settings}
    )
    outcome.computed.append(step)
    echo(
      f'{job.workdir.name}: step {step} ({i + 1}/{len(todo)})  {summary(fields)}  [{seconds:.1f} s]'
    )
