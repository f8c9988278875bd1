"""What every config passes: validation, command-line overrides, and config differences.

The configs themselves, the paper's experiments, are in ``bnjax.experiments``
(``configs/*.py`` wrap them). Here:

- ``validate(config, num_devices)`` runs before any work and raises ``ConfigError``
  with a one-line message (probe settings: ``bnjax.scheduled_probes.check``).
- ``apply_arg``: the argument after a config file's ':', big_vision style::

    --config=configs/vgg_noisy.py:local,num_steps=20

  comma-separated items, each a word the experiment defines (``local``: the laptop-size
  run) or ``FIELD=VALUE`` for a top-level field, VALUE read as that field's type exactly
  as ``--config.FIELD=VALUE`` reads it (so the two spellings give equal configs). Words
  apply first, then the fields. An unknown word or field, or a value the field's type
  cannot read, is a one-line ConfigError naming the closest fields. ``--config.x=``
  overrides still apply after it, and to nested fields too. Sweep files take their own
  argument (a run name, ``--config=SWEEP:RUN``; see ``bnjax.sweep``), not this one.
- ``load_config_file`` and ``unknown_override``: the one-line errors of ``bnjax.main``.
- ``differing_fields``: the dotted fields where two configs differ (resuming a workdir).
"""

import contextlib
import difflib
import importlib.util
import math
import pathlib
from typing import Any, Callable

import ml_collections
from absl import flags

from bnjax import data, models, scheduled_probes, tensorboard
from bnjax.workdir import differing_fields  # noqa: F401 (its home: no JAX there)

LOSSES = ('cross_entropy', 'sum_squared')
BN_STATS = ('global', 'per_device')


class ConfigError(ValueError):
  """A config that cannot run; the message says which field and why."""


def __getattr__(name: str):
  """``config_lib.base``, ``vgg`` and ``dln``: the experiments' former home, kept for the
  code that still calls them here (configs/sweeps, tests); they live in bnjax.experiments."""
  if name in ('base', 'vgg', 'dln'):
    from bnjax import experiments  # pylint: disable=g-import-not-at-top  (it imports us)

    return getattr(experiments, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# ------------------------------------------------------------------------- validation
def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


@contextlib.contextmanager
def _refused():
  """Turns the ValueError of a library's own check into a ConfigError, same message."""
  try:
    yield
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _positive_int(c, field: str, allow_zero: bool = False) -> None:
  v = c[field]
  ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
  _require(ok, f'config.{field} must be an integer {">= 0" if allow_zero else "> 0"}, got {v!r}')


def _check_names(c: ml_collections.ConfigDict) -> None:
  for field in ('model', 'norm', 'dataset', 'loss', 'bn_stats', 'compilation_cache'):
    _require(isinstance(c[field], str), f'config.{field} must be a string, got {c[field]!r}')
  _require(
    c.model in models.MODELS, f'unknown model {c.model!r}; valid names: {", ".join(models.MODELS)}'
  )
  with _refused():
    models.get_normalizer(c.norm, **c.norm_kwargs.to_dict())
    data.check_name(c.dataset)
    tensorboard.check_mode(c.tensorboard)
  _require(c.loss in LOSSES, f'unknown loss {c.loss!r}; valid: {", ".join(LOSSES)}')
  _require(c.bn_stats in BN_STATS, f'unknown bn_stats {c.bn_stats!r}; valid: {", ".join(BN_STATS)}')
  _require(
    c.compilation_cache != '',
    "config.compilation_cache must be 'auto', 'off' or a directory, got an empty string",
  )


def _check_numbers(c: ml_collections.ConfigDict, num_devices: int) -> None:
  lr = c.learning_rate
  number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
  _require(
    number and math.isfinite(lr) and lr > 0,
    f'config.learning_rate must be a finite number > 0, got {lr!r}',
  )
  _require(
    isinstance(c.momentum, (int, float)) and 0 <= c.momentum < 1,
    f'config.momentum must be in [0, 1), got {c.momentum!r}',
  )
  for field in ('batch_size', 'eval_batch_size', 'steps_per_call', 'max_checkpoints_to_keep'):
    _positive_int(c, field)
  for field in ('num_steps', 'seed', 'eval_every', 'checkpoint_every'):
    _positive_int(c, field, allow_zero=True)
  # The train program takes the seed as an int32 argument (seeds share one program).
  _require(c.seed < 2**31, f'config.seed must be below 2**31, got {c.seed!r}')
  every = c.status_every_seconds
  _require(
    isinstance(every, (int, float)) and not isinstance(every, bool) and every > 0,
    f'config.status_every_seconds must be a number > 0, got {every!r}',
  )
  for field in ('batch_size', 'eval_batch_size'):
    _require(
      c[field] % num_devices == 0,
      f'config.{field}={c[field]} is not divisible by the {num_devices} devices',
    )


def _check_combinations(c: ml_collections.ConfigDict, num_devices: int) -> None:
  _require(
    c.model != 'dln' or c.dataset == 'dln_gaussian',
    f'model dln needs dataset dln_gaussian, got {c.dataset!r}',
  )
  _require(
    c.dataset != 'dln_gaussian' or c.model == 'dln',
    f'dataset dln_gaussian is for model dln, got {c.model!r}',
  )
  _require(
    (c.loss == 'sum_squared') == (c.dataset == 'dln_gaussian'),
    f'loss {c.loss!r} does not fit dataset {c.dataset!r} '
    '(sum_squared is for dln_gaussian, cross_entropy for classification)',
  )
  if c.bn_stats == 'per_device':
    _require(c.batch_size % num_devices == 0, 'per-device BN statistics need batch % devices == 0')


def validate(c: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks names, types, ranges and combinations; raises ConfigError before any work."""
  _check_names(c)
  _check_numbers(c, num_devices)
  _check_combinations(c, num_devices)
  for name, probe in c.probes.items():
    with _refused():
      scheduled_probes.check(name, probe)


# ------------------------------------------------------------- command-line overrides
_PARSERS = {  # the parsers of ml_collections' --config.FIELD=VALUE, by the field's type
  int: (flags.IntegerParser(), 'an integer'),
  float: (flags.FloatParser(), 'a number'),
  bool: (flags.BooleanParser(), 'true or false'),
  str: (flags.ArgumentParser(), 'a string'),
}


def _field_value(config: ml_collections.ConfigDict, item: str) -> tuple[str, Any]:
  """``'FIELD=VALUE'`` -> (FIELD, VALUE read as the field's type); ConfigError if it cannot."""
  field, _, text = item.partition('=')
  if message := unknown_override(config, field):
    raise ConfigError(f'config argument {item!r}: {message}')
  if '.' in field or isinstance(config[field], ml_collections.ConfigDict):
    raise ConfigError(
      f'config argument {item!r}: only top-level fields are set here; '
      f'use --config.{field if "." in field else field + ".<field>"}=...'
    )
  if type(config[field]) not in _PARSERS:
    raise ConfigError(
      f'config argument {item!r}: config.{field} is a '
      f'{type(config[field]).__name__}; use --config.{field}=...'
    )
  parser, kind = _PARSERS[type(config[field])]
  try:
    return field, parser.parse(text)
  except ValueError:
    raise ConfigError(
      f'config argument {item!r}: config.{field} must be {kind}, got {text!r}'
    ) from None


def apply_arg(
  config: ml_collections.ConfigDict,
  arg: str | None,
  **words: Callable[[ml_collections.ConfigDict], None],
) -> ml_collections.ConfigDict:
  """``config`` changed by ``arg``, the argument after a config file's ':' (see above).

  ``words`` maps each word the experiment accepts (``local``) to its change of the config.
  """
  items = [item for item in (arg or '').split(',') if item]
  for item in items:
    if '=' not in item and item not in words:
      valid = ', '.join(f'"{w}"' for w in words)
      raise ConfigError(f'unknown config argument {item!r}; valid: {valid}, FIELD=VALUE')
  for item in items:
    if '=' not in item:
      words[item](config)
  for item in items:
    if '=' in item:
      field, value = _field_value(config, item)
      config[field] = value
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of ``--config=PATH[:ARG]``: PATH's get_config(ARG), as config_flags does."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_bnjax_config', path)
  if module_spec is None or not pathlib.Path(path).is_file():
    raise ConfigError(f'no config file {path}')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def unknown_override(config: ml_collections.ConfigDict, field: str) -> str | None:
  """A one-line message when dotted ``field`` names no field of ``config``, else None.

  Names the closest valid fields, e.g. "config has no field 'probes.landscape.evry';
  closest: probes.landscape.every".
  """
  node, parts = config, field.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      prefix = '.'.join(parts[:i])
      names = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
      full = [f'{prefix}.{n}' if prefix else n for n in close or sorted(names)]
      hint = (
        f'; closest: {", ".join(full)}' if close else f'; valid: {", ".join(full)}' if full else ''
      )
      return f'config has no field {field!r}{hint}'
    node = node[part]
  return None
