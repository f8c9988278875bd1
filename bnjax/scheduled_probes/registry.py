"""How a scheduled probe is declared (``register``) and what the trainer gets (``Probe``).

A probe is declared once, by decorating its builder::

  @register('ics', layers=LAYERS, shift=one_of(('block', 'kernel'), default='block'))
  def _ics(settings, ctx): ...

Each keyword is one of the probe's config fields, a ``Setting``: its default (none: the
field is required) and its check. Every probe also has ``every`` (required) and ``steps``
(default ``()``). The builder gets the probe's fields with the defaults filled in and a
``Context``, and returns ``fn(state, batch, noise_key, loss, grads, seed) -> dict[str, Array]``
(seed: the run's, int32 [], traced: read it there, not from the config, so that runs that
differ only in their seed share one compiled program).
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bnjax import models

REQUIRED = object()  # the default of a field that has none


@dataclasses.dataclass(frozen=True)
class Probe:
  every: int  # period in steps; 0: only at ``steps``
  steps: tuple[int, ...]  # further steps where it runs
  fn: Callable  # (state, batch, noise_key, loss, grads, seed) -> dict[str, jax.Array]

  def due(self, step: int) -> bool:
    """Whether the probe runs at ``step`` (a Python int, on the host)."""
    return bool(self.every and step % self.every == 0) or step in self.steps

  def due_traced(self, step: jax.Array) -> jax.Array:
    """``due`` for a traced step inside the train chunk."""
    due = (step % self.every == 0) if self.every else jnp.bool_(False)
    for s in self.steps:
      due = due | (step == s)
    return due


@dataclasses.dataclass(frozen=True)
class Context:
  """What a builder may use: the run's config, its model (``models.for_control_flow``'s,
  as probes run under ``lax.cond``), the training objective and the optimiser."""

  config: ml_collections.ConfigDict
  model: nn.Module
  objective: Callable  # objective_lib.make_objective(model, config.loss)
  tx: optax.GradientTransformation


@dataclasses.dataclass(frozen=True)
class Setting:
  """One config field of a probe: its default (``REQUIRED``: none) and its check.

  ``check(value)`` returns what is wrong (completed to "probes.<probe>.<field> ...") or
  None; it runs in ``config_lib.validate``, before any work.
  """

  default: Any = REQUIRED
  check: Callable[[Any], str | None] | None = None


def one_of(choices: tuple, default: Any = REQUIRED) -> Setting:
  return Setting(
    default, lambda v: None if v in choices else f'must be one of {choices}, got {v!r}'
  )


def _positive_numbers(m) -> str | None:
  ok = (
    isinstance(m, (tuple, list))
    and len(m) > 0
    and all(isinstance(x, (int, float)) and x > 0 for x in m)
  )
  return None if ok else f'must be numbers > 0, got {m!r}'


def _layer_numbers(layers) -> str | None:
  ok = (
    isinstance(layers, (tuple, list))
    and len(layers) > 0
    and all(isinstance(k, int) and k >= 1 for k in layers)
  )
  return None if ok else f'must be layer numbers >= 1, got {layers!r}'


ANY = Setting()  # required, any value
POSITIVE_NUMBERS = Setting(check=_positive_numbers)  # required, a tuple of numbers > 0
LAYERS = Setting(check=_layer_numbers)  # required, layer numbers (checked on the model too)
SCHEDULE = {'every': Setting(), 'steps': Setting(())}  # every probe's


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered probe: its builder and its fields (``SCHEDULE``'s and its own)."""

  build: Callable[[ml_collections.ConfigDict, Context], Callable]
  fields: dict[str, Setting]

  def with_defaults(self, settings: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``settings`` (a probe's config) with every absent field that has a default."""
    defaults = {k: s.default for k, s in self.fields.items() if s.default is not REQUIRED}
    return ml_collections.ConfigDict({**defaults, **settings})


PROBES: dict[str, Entry] = {}  # filled by ``register``, in declaration order


def register(name: str, **fields: Setting) -> Callable:
  """Declares probe ``name`` with its ``fields`` (besides ``every`` and ``steps``); the
  decorated function is its builder ``(settings, ctx) -> fn``."""

  def decorate(build: Callable) -> Callable:
    if name in PROBES:
      raise ValueError(f'probe {name!r} is registered twice')
    PROBES[name] = Entry(build, {**SCHEDULE, **fields})
    return build

  return decorate


def layer_numbers(ctx: Context, name: str, layers) -> list[int]:
  """``layers`` if the model has them; else the ValueError that names its layers."""
  n = models.num_layers(ctx.model)
  bad = [k for k in layers if not 1 <= k <= n]
  if bad:
    raise ValueError(f'probes.{name}.layers {bad} do not exist; this model has layers 1..{n}')
  return list(layers)
