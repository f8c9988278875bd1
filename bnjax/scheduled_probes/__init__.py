"""Probes during training: ``config.probes`` -> functions the train step runs on schedule.

``bnjax.probes`` is the library (Hessian, ICS, landscape, ... of any loss); this package
is the trainer's side: which probe runs when, on what, with which settings.

Each entry of ``config.probes`` names a probe (``catalog`` lists them) and its settings;
``every`` is its period in steps (it runs at step 0 too; 0 disables it) and ``steps``
(optional) lists further steps where it runs, e.g. the last one. A probe runs at theta_t
on step t's own batch, BatchNorm in training mode with the updated statistics discarded,
and noisy-BN noise from step t's key, i.e. on exactly the loss that step t's update
differentiates. Results reach ``metrics.jsonl`` as ``probe/<name>/<field>``.

  check(name, settings)     the probe's settings, before any work (config_lib.validate)
  build(config, model, tx)  the enabled probes, {name: Probe}, for the train chunk

Adding a probe touches ``catalog.py`` alone (and its test): see ``registry.register``.
"""

import flax.linen as nn
import ml_collections
import optax

from bnjax import models, objective as objective_lib
from bnjax.scheduled_probes import catalog  # noqa: F401  (registers the probes)
from bnjax.scheduled_probes.registry import PROBES, REQUIRED, Context, Probe


def _schedule_error(name: str, settings) -> str | None:
  every, steps = settings['every'], settings.get('steps', ())
  if not (isinstance(every, int) and not isinstance(every, bool) and every >= 0):
    return f'config.every must be an integer >= 0, got {every!r}'
  if not (
    isinstance(steps, (tuple, list))
    and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in steps)
  ):
    return f'probes.{name}.steps must be a tuple of step numbers >= 0, got {steps!r}'
  return None


def check(name: str, settings: ml_collections.ConfigDict) -> None:
  """Raises ValueError, one line, when probe ``name`` cannot run with ``settings``."""
  if name not in PROBES:
    raise ValueError(f'unknown probe {name!r}; valid: {", ".join(PROBES)}')
  fields = PROBES[name].fields
  extra = set(settings.keys()) - set(fields)
  if extra:
    raise ValueError(
      f'probe {name!r} has no field(s) {sorted(extra)}; its fields: {sorted(fields)}'
    )
  missing = [f for f, s in fields.items() if s.default is REQUIRED and f not in settings]
  if missing:
    raise ValueError(f'probe {name!r} needs field(s) {missing}; its fields: {sorted(fields)}')
  if error := _schedule_error(name, settings):
    raise ValueError(error)
  for field, setting in fields.items():
    if field in settings and setting.check and (error := setting.check(settings[field])):
      raise ValueError(f'probes.{name}.{field} {error}')


def build(
  config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation
) -> dict[str, Probe]:
  """The enabled probes of ``config.probes``; raises ValueError for impossible settings.

  Probes run under ``lax.cond`` (see ``train.make_train_chunk``), so they differentiate
  ``models.for_control_flow(model)``: the same function, fast inside control flow.
  """
  model = models.for_control_flow(model)
  ctx = Context(config, model, objective_lib.make_objective(model, config.loss), tx)
  out = {}
  for name, settings in config.probes.items():
    steps = tuple(settings.get('steps', ()))
    if not settings.every and not steps:
      continue
    entry = PROBES[name]
    out[name] = Probe(settings.every, steps, entry.build(entry.with_defaults(settings), ctx))
  return out


__all__ = ['PROBES', 'Probe', 'build', 'check']
