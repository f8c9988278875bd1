"""The probes ``python -m bnjax.analyze`` runs: how each is called, which fields it writes.

Every entry calls one function of ``bnjax.probes`` as ``fn(loss_fn, params, [key,]
**kwargs)``: ``loss_fn`` the run's loss over the evaluation batches, ``params`` the
checkpoint's, ``key`` from ``--seed`` when the function samples. ``kwargs`` come from
the command line (``--arg KEY=VALUE`` or ``--KEY=VALUE``), each VALUE read as the type
the function declares for KEY (``parse_value``, after big_vision's ``parse_arg``), or
filled by the entry (``defaults``: e.g. gradient_landscape's step sizes from the run's
own landscape probe). ``fields`` are the result's fields written to the jsonl; a result
that is a dict of results (a per-block probe) writes each field as a dict by block.
"""

import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bnjax import probes


class AnalysisError(ValueError):
  """A request analyze cannot run; the message is one line and says what to change."""


@dataclasses.dataclass(frozen=True)
class Entry:
  fn: Callable  # the bnjax.probes function
  fields: tuple[str, ...] | Callable[[Any], dict]  # result fields written, or result -> them
  controlled: tuple[str, ...] = ()  # keywords analyze sets itself, besides loss_fn/params/key
  defaults: Callable[[dict], dict] | None = None  # run config -> keyword defaults


def _landscape_step_sizes(config: dict) -> dict:
  """The run's own landscape probe's step sizes: multipliers x learning rate."""
  multipliers = (
    config.get('probes', {}).get('landscape', {}).get('step_size_multipliers', (0.5, 1.0, 2.0, 4.0))
  )
  return {'step_sizes': tuple(m * config['learning_rate'] for m in multipliers)}


def _diagonal_by_leaf(result) -> dict:
  """hessian_diagonal's estimate summed per params leaf (the diagonal blocks' traces):
  the whole diagonal is as large as the model."""
  leaves = jax.tree_util.tree_flatten_with_path(result.estimate)[0]
  return {
    'leaf_traces': {
      jax.tree_util.keystr(path, simple=True, separator='/'): jnp.sum(v) for path, v in leaves
    }
  }


_TRACE = ('estimate', 'stderr', 'num_samples')
_SHARPNESS = ('sharpness', 'stderr', 'loss', 'values')
TABLE: dict[str, Entry] = {
  'top_eigenvalues': Entry(
    probes.top_eigenvalues, ('eigenvalues', 'residuals', 'converged', 'num_iterations')
  ),
  'hessian_trace': Entry(probes.hessian_trace, _TRACE),
  'hessian_trace_hutchpp': Entry(probes.hessian_trace_hutchpp, _TRACE),
  'hessian_diagonal': Entry(probes.hessian_diagonal, _diagonal_by_leaf),
  'spectral_density': Entry(
    probes.spectral_density, ('nodes', 'weights', 'num_probes', 'trace_stderr')
  ),
  'adaptive_sharpness': Entry(probes.adaptive_sharpness, _SHARPNESS),
  'epsilon_sharpness': Entry(probes.epsilon_sharpness, _SHARPNESS),
  'gradient_landscape': Entry(
    probes.gradient_landscape,
    ('loss', 'grad_diff', 'beta', 'loss_at_start', 'grad_norm'),
    ('gradient', 'loss_at_start'),
    _landscape_step_sizes,
  ),
  'loss_surface': Entry(
    probes.loss_surface, ('loss', 'grid', 'center_loss'), ('directions', 'grid')
  ),
}
_SET_BY_ANALYZE = ('loss_fn', 'params', 'key')


def takes_key(entry: Entry) -> bool:
  return 'key' in inspect.signature(entry.fn).parameters


def entry(name: str) -> Entry:
  if name not in TABLE:
    close = difflib.get_close_matches(name, TABLE, n=1)
    hint = f' (did you mean {close[0]}?)' if close else ''
    raise AnalysisError(f'unknown probe {name!r}{hint}; valid: {", ".join(TABLE)}')
  return TABLE[name]


def fields_of(entry_: Entry, result: Any) -> dict[str, Any]:
  """{field: value} of ``result``; a dict of results (per block) gives {field: {block: v}}."""
  if callable(entry_.fields):
    return entry_.fields(result)
  if isinstance(result, dict):
    return {f: {block: getattr(r, f) for block, r in result.items()} for f in entry_.fields}
  return {f: getattr(result, f) for f in entry_.fields}


# ------------------------------------------------------------------------- arguments
_TRUE, _FALSE = ('true', 't', 'yes', 'y', '1'), ('false', 'f', 'no', 'n', '0')
_KIND_NAMES = {int: 'an integer', float: 'a number', str: 'a string'}


def autotype(text: str) -> Any:
  """'True'/'False' -> bool, then int, then float, 'None' -> None, else the string; a
  comma-separated text -> a tuple of those (big_vision's autotype, with sequences)."""
  if ',' in text:
    return tuple(autotype(t) for t in text.split(',') if t)
  if text in ('True', 'False', 'true', 'false'):
    return text.lower() == 'true'
  if text in ('None', 'none'):
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _parse_as(kind, text: str) -> Any:
  """``text`` read as annotation ``kind``; ValueError when it cannot be."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and text in ('None', 'none'):
      return None
    for option in (a for a in args if a is not type(None)):
      try:
        return _parse_as(option, text)
      except ValueError:
        continue
    raise ValueError(f'must be {" or ".join(_KIND_NAMES.get(a, str(a)) for a in args)}')
  if origin is typing.Literal:
    value = autotype(text)
    if value not in args:
      raise ValueError(f'must be one of {args}')
    return value
  if kind is bool:
    if text.lower() not in _TRUE + _FALSE:
      raise ValueError('must be true or false')
    return text.lower() in _TRUE
  if kind in (int, float, str):
    try:
      return kind(text)
    except ValueError:
      raise ValueError(f'must be {_KIND_NAMES[kind]}') from None
  if origin in (tuple, list) or getattr(origin, '__name__', '') == 'Sequence':
    return tuple(autotype(t) for t in text.split(',') if t)
  return autotype(text)


def parse_value(parameter: inspect.Parameter, text: str) -> Any:
  """``text`` as the type ``parameter`` declares (its annotation, else its default's)."""
  kind = parameter.annotation
  if kind is inspect.Parameter.empty:
    default = parameter.default
    kind = typing.Any if default in (None, inspect.Parameter.empty) else type(default)
  return _parse_as(kind, text)


def probe_kwargs(name: str, items: list[tuple[str, str]], config: dict) -> dict[str, Any]:
  """The keyword arguments of probe ``name`` from (KEY, VALUE text) pairs and the entry's
  defaults for the run of ``config``; AnalysisError (one line) for an unknown KEY, a
  VALUE of the wrong type, or a required argument missing."""
  e = entry(name)
  params = dict(inspect.signature(e.fn).parameters)
  settable = [k for k in params if k not in _SET_BY_ANALYZE + e.controlled] + ['precision']
  kwargs = dict(e.defaults(config)) if e.defaults else {}
  for key, text in items:
    key = key.replace('-', '_')
    if key in e.controlled + _SET_BY_ANALYZE:
      raise AnalysisError(
        f'{name}: {key} is set by analyze itself'
        + (' (--directions, --grid, --grid2)' if name == 'loss_surface' else '')
      )
    if key not in settable:
      close = difflib.get_close_matches(key, settable, n=1)
      hint = f' (did you mean {close[0]}?)' if close else ''
      raise AnalysisError(f'{name} has no argument {key!r}{hint}; valid: {", ".join(settable)}')
    if key == 'precision':
      kwargs[key] = None if text in ('None', 'none') else text
      continue
    try:
      kwargs[key] = parse_value(params[key], text)
    except ValueError as err:
      raise AnalysisError(f'{name} argument {key}={text!r}: {err}') from None
  missing = [
    k
    for k, p in params.items()
    if p.default is inspect.Parameter.empty
    and k not in _SET_BY_ANALYZE + e.controlled
    and k not in kwargs
  ]
  if missing:
    raise AnalysisError(f'{name} needs {", ".join(f"--{k}=VALUE" for k in missing)}')
  if kwargs.get('operator') in ('fisher', 'fisher_exact') and config['loss'] != 'cross_entropy':
    raise AnalysisError(
      f'--operator={kwargs["operator"]} is the Fisher of softmax '
      f"cross-entropy; this run's loss is {config['loss']}: use "
      '--operator=ef or ggn'
    )
  return kwargs
