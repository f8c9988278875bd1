"""The paper's experiments as ml_collections configs, and the check every config passes.

``configs/*.py`` are one-line wrappers around ``vgg`` and ``dln`` here, so that every
config has the same top-level fields and ``--config.<field>=<value>`` reads the same
everywhere:

  model, norm, dataset, learning_rate, batch_size, num_steps, seed, eval_every,
  checkpoint_every, probes

plus grouped sub-configs (``norm_kwargs``, ``model_kwargs``, ``data``) and a few
trainer settings. ``validate`` runs before any work and raises ``ConfigError`` with a
one-line message; each probe's settings are checked by ``bnjax.scheduled_probes.check``.
"""

import difflib
import importlib.util
import math
import pathlib
from typing import Any

import ml_collections

from bnjax import data, models, scheduled_probes, tensorboard

LOSSES = ('cross_entropy', 'sum_squared')
BN_STATS = ('global', 'per_device')


class ConfigError(ValueError):
  """A config that cannot run; the message says which field and why."""


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = 'vgg16'
  c.norm = 'batch'
  c.norm_kwargs = ml_collections.ConfigDict()  # fields of the normaliser, e.g. n_mu
  c.model_kwargs = ml_collections.ConfigDict()  # e.g. width for VGG
  c.bn_stats = 'global'  # 'global': statistics over the global batch; 'per_device'
  c.dataset = 'cifar10'
  c.data = ml_collections.ConfigDict()
  c.data.cache_dir = ''  # '' -> $BNJAX_CACHE or ~/.cache/bnjax
  c.data.tfds_data_dir = ''  # '' -> tfds' default
  c.data.skip_unreadable_images = False  # True: leave damaged images out (counted)
  c.loss = 'cross_entropy'
  c.learning_rate = 0.1
  c.momentum = 0.0  # the paper: plain SGD
  c.batch_size = 128
  c.eval_batch_size = 512  # a power of two: divisible by any device count up to 512
  c.num_steps = 15_000
  c.seed = 0
  c.eval_every = 1000  # 0: only at the end
  c.checkpoint_every = 1000  # 0: only at the end
  c.max_checkpoints_to_keep = 2
  c.steps_per_call = 1  # steps fused into one jitted lax.scan (small models: many)
  c.log_every_seconds = 10.0  # progress line on the terminal
  c.tensorboard = 'auto'  # TensorBoard events beside metrics.jsonl: 'auto', 'on', 'off'
  c.probes = ml_collections.ConfigDict()
  return c


def _apply_arg(c: ml_collections.ConfigDict, arg: str | None, shrink) -> ml_collections.ConfigDict:
  if arg in (None, ''):
    return c
  if arg == 'local':
    shrink(c)
    return c
  raise ConfigError(f'unknown config argument {arg!r}; valid: "local"')


def vgg(norm: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """VGG-16 on CIFAR-10, batch 128, plain SGD at LR 0.1, 15,000 steps (PAPER.md)."""
  c = base()
  c.model = 'vgg16'
  c.norm = norm
  c.model_kwargs.width = 1.0
  c.probes.landscape = ml_collections.ConfigDict(
      {'every': 100, 'step_size_multipliers': (0.5, 1.0, 2.0, 4.0)})
  c.probes.ics = ml_collections.ConfigDict({'every': 100, 'layers': (5, 10)})
  c.probes.activations = ml_collections.ConfigDict(
      {'every': 100, 'layers': (2, 3, 9, 11, 13), 'seed': 0})

  def shrink(c):  # about a minute on a 2-core CPU
    c.model = 'vgg11'
    c.model_kwargs.width = 0.25
    c.batch_size = 64
    c.num_steps = 300
    c.eval_every = 100
    c.checkpoint_every = 100
    c.eval_batch_size = 1024
    for probe in c.probes.values():
      probe.every = 50
    c.probes.ics.layers = (2, 5)
    c.probes.activations.layers = (2, 5, 8)

  return _apply_arg(c, arg, shrink)


def dln(norm: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The 25-layer 10x10 deep linear network, full-batch GD, LR 1e-6, 10,000 steps."""
  c = base()
  c.model = 'dln'
  c.norm = norm
  c.model_kwargs.depth = 25
  c.model_kwargs.width = 10
  c.dataset = 'dln_gaussian'
  c.loss = 'sum_squared'
  c.learning_rate = 1e-6
  c.batch_size = 1000  # full batch: every sample every step
  c.num_steps = 10_000
  c.eval_every = 0
  c.checkpoint_every = 2000
  c.steps_per_call = 100
  c.probes.landscape = ml_collections.ConfigDict(
      {'every': 100, 'step_size_multipliers': (0.01, 0.1, 1.0, 10.0, 30.0)})
  c.probes.ics = ml_collections.ConfigDict({'every': 100, 'layers': (9, 17)})
  c.probes.activations = ml_collections.ConfigDict(
      {'every': 100, 'layers': (1, 11, 24), 'seed': 0})

  def shrink(c):
    c.num_steps = 1000
    c.checkpoint_every = 500

  return _apply_arg(c, arg, shrink)


# ------------------------------------------------------------------------- validation
def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def _positive_int(c, field: str, allow_zero: bool = False) -> None:
  v = c[field]
  ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
  _require(ok, f'config.{field} must be an integer {">= 0" if allow_zero else "> 0"}, got {v!r}')


def validate(c: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks names, types, ranges and combinations; raises ConfigError before any work."""
  for field in ('model', 'norm', 'dataset', 'loss', 'bn_stats'):
    _require(isinstance(c[field], str), f'config.{field} must be a string, got {c[field]!r}')
  _require(c.model in models.MODELS,
           f'unknown model {c.model!r}; valid names: {", ".join(models.MODELS)}')
  try:
    models.get_normalizer(c.norm, **c.norm_kwargs.to_dict())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    data.check_name(c.dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    tensorboard.check_mode(c.tensorboard)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(c.loss in LOSSES, f'unknown loss {c.loss!r}; valid: {", ".join(LOSSES)}')
  _require(c.bn_stats in BN_STATS, f'unknown bn_stats {c.bn_stats!r}; valid: {", ".join(BN_STATS)}')
  lr = c.learning_rate
  _require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0,
           f'config.learning_rate must be a finite number > 0, got {lr!r}')
  _require(isinstance(c.momentum, (int, float)) and 0 <= c.momentum < 1,
           f'config.momentum must be in [0, 1), got {c.momentum!r}')
  for field in ('batch_size', 'eval_batch_size', 'steps_per_call', 'max_checkpoints_to_keep'):
    _positive_int(c, field)
  for field in ('num_steps', 'seed', 'eval_every', 'checkpoint_every'):
    _positive_int(c, field, allow_zero=True)
  for field in ('batch_size', 'eval_batch_size'):
    _require(c[field] % num_devices == 0,
             f'config.{field}={c[field]} is not divisible by the {num_devices} devices')
  _require(c.model != 'dln' or c.dataset == 'dln_gaussian',
           f'model dln needs dataset dln_gaussian, got {c.dataset!r}')
  _require(c.dataset != 'dln_gaussian' or c.model == 'dln',
           f'dataset dln_gaussian is for model dln, got {c.model!r}')
  _require((c.loss == 'sum_squared') == (c.dataset == 'dln_gaussian'),
           f'loss {c.loss!r} does not fit dataset {c.dataset!r} '
           '(sum_squared is for dln_gaussian, cross_entropy for classification)')
  if c.bn_stats == 'per_device':
    _require(c.batch_size % num_devices == 0, 'per-device BN statistics need batch % devices == 0')
  for name, probe in c.probes.items():
    try:
      scheduled_probes.check(name, probe)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def differing_fields(a: dict[str, Any], b: dict[str, Any], prefix: str = '') -> list[str]:
  """Dotted names of the fields where two (nested) config dicts differ."""
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, '<absent>'), b.get(k, '<absent>')
    if isinstance(va, dict) and isinstance(vb, dict):
      out += differing_fields(va, vb, f'{prefix}{k}.')
    elif va != vb:
      out.append(f'{prefix}{k}')
  return out


# ------------------------------------------------------------- command-line overrides
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
      hint = (f'; closest: {", ".join(full)}' if close else
              f'; valid: {", ".join(full)}' if full else '')
      return f'config has no field {field!r}{hint}'
    node = node[part]
  return None
