r"""The accelerator check: bnjax's steps on this device against its peak, in one command.

  python benchmarks/accelerator.py [--reduced | --no-reduced] [--devices=N] [--json=PATH]
      [--rows=vgg16,vgg11,dln,probe] [--repeats=N] [--force-accelerator-paths]

Each row is a program as ``bnjax.train`` runs it: the train chunk (``make_train_chunk``)
jitted with the state replicated and donated and the batch sharded over a 'data' mesh axis
of the first N local devices (all by default), on random data of the dataset's shapes:

  vgg16  VGG-16 BN train step, batch 128, 32x32x3, width 1.0 (configs/vgg_bn.py, no probes)
  vgg11  VGG-11 BN, the same
  dln    the DLN BN step: 25 layers 10x10, batch 1000, 100 steps per call in a lax.scan
  probe  a step of configs/vgg_bn.py with its probes due (landscape, ICS, activations), as
         the trainer runs every 100th step; the same program is also timed at a step where
         no probe is due

Per row: compile time (trace + lower + compile), step time (median of ``--repeats`` runs
after a warm-up), examples/s, FLOP/s from XLA's cost analysis of the compiled program, its
fraction of the device's peak (``PEAKS``, matched by ``device_kind``; on a device not in
the table, e.g. a CPU, the measured rate of a large float32 matmul, stated as such), XLA's
compiled memory (arguments + outputs + temporaries, per device) and, where the backend
keeps it, the device's peak bytes in use so far. Then the projected wall time of the
paper-scale VGG set (configs/sweeps/paper_vgg.py), with the parts of its formula.

Precision: float32 parameters and activations; bnjax leaves the train step's matmuls and
convolutions at JAX's default precision (TPU: one bfloat16 pass with float32 accumulation;
NVIDIA Ampere and later: TF32; older GPUs and CPUs: float32), so the peak compared with is
the one at that precision. The probes' matmuls run at 'highest' (float32; about six
bfloat16 passes on a TPU).

--reduced (the default on CPU) shrinks the VGGs to width 0.25 (batch 128 kept) and the
probe row to configs/vgg_bn.py:local (VGG-11, width 0.25, batch 64, its probe layers), with
3 timed repetitions, so that the whole check takes under 2 minutes on a 2-core CPU; its
projection scales the measured VGG-16 step to paper scale by XLA's FLOP count.
--force-accelerator-paths makes a CPU run take the choices an accelerator makes wherever
bnjax offers a switch for them (``FORCED``), and lists those it cannot force.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import statistics
import sys
import time

from bnjax import xla_flags

if __name__ == '__main__':
  xla_flags.apply()  # as bnjax.main runs a VGG config; before jax is imported

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bnjax.data import dln_gaussian
from bnjax.experiments import dln as dln_config, vgg as vgg_config
from bnjax.models import for_control_flow, from_config as model_from_config
from bnjax.models.common import ASSUME_BACKEND
from bnjax.models.norms import NOISY
from bnjax.objective import init_variables, make_objective
from bnjax.scheduled_probes import Probe, build as build_probes
from bnjax.sweep import load as load_sweep
from bnjax.train import TrainState, make_train_chunk, make_train_step
from timing import median_time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_VGG_SWEEP = ROOT / 'configs' / 'sweeps' / 'paper_vgg.py'
ROWS = ('vgg16', 'vgg11', 'dln', 'probe')
REDUCED_WIDTH = 0.25
CIFAR10_TEST_EXAMPLES = 10_000
# Estimates where the check measures nothing: one Hessian-vector product costs about 2.4
# gradients (benchmarks/probes_vgg.py: hvp 2.43x loss-and-gradient, VGG-11 BN, batch
# 128), at the probes' precision, i.e. as the probe step's gradients cost; a forward pass
# (evaluation, the activations probe) a third of a train step per example.
HVP_IN_GRADIENTS = 2.4
FORWARD_IN_STEPS = 1 / 3
# What --force-accelerator-paths changes on CPU: it sets $BNJAX_ASSUME_BACKEND=tpu (read by
# models.common.assumed_backend and probes._common.assumed_backend), so every platform
# check takes an accelerator's branch.
FORCED = (
  "VGG convolutions as XLA's (no im2col) in the train steps and the probes' model "
  '(models.common.use_im2col, models.for_control_flow)',
  'XLA convolutions inside loops (probes.convolutions.for_loops leaves them)',
  'activations not stored once (models.common.materialized)',
  'landscape step sizes vmapped (probes.landscape.default_batch_size)',
  'loss-surface points vmapped (probes.surface)',
)


# ------------------------------------------------------------------------------- peaks
@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense peak FLOP/s of one JAX device of a chip, per matmul precision."""

  chip: str
  pattern: str  # regex searched in device_kind.lower()
  flops: dict  # precision ('bf16', 'fp16', 'tf32', 'fp32') -> FLOP/s of one JAX device

  @property
  def step_precision(self) -> str:
    """The precision of a float32 matmul at JAX's default precision on this chip."""
    return next(p for p in ('tf32', 'fp32', 'bf16') if p in self.flops)

  @property
  def step_flops(self) -> float:
    return self.flops[self.step_precision]


T = 1e12
# Vendors' dense figures (no sparsity), per JAX device: a TPU v2 / v3 chip is two devices
# (one per TensorCore), later TPUs and GPUs one. Tensor-core figures with float32
# accumulation. More specific patterns first.
PEAKS = (
  Peak('TPU v2', r'^tpu v2', {'bf16': 45 * T / 2}),
  Peak('TPU v3', r'^tpu v3', {'bf16': 123 * T / 2}),
  Peak('TPU v4', r'^tpu v4$', {'bf16': 275 * T}),
  Peak('TPU v5e', r'^tpu v5 ?(lite|e)', {'bf16': 197 * T}),
  Peak('TPU v5p', r'^tpu v5p?$', {'bf16': 459 * T}),
  Peak('TPU v6e (Trillium)', r'^tpu (v6|trillium)', {'bf16': 918 * T}),
  Peak('H100 PCIe', r'h100.*pcie', {'bf16': 756 * T, 'tf32': 378 * T, 'fp32': 51.2 * T}),
  Peak('H100 NVL', r'h100 nvl', {'bf16': 835 * T, 'tf32': 417.5 * T, 'fp32': 60 * T}),
  Peak('H100 SXM', r'h100', {'bf16': 989 * T, 'tf32': 494.5 * T, 'fp32': 66.9 * T}),
  Peak('H200', r'h200', {'bf16': 989 * T, 'tf32': 494.5 * T, 'fp32': 66.9 * T}),
  Peak('A100', r'a100', {'bf16': 312 * T, 'tf32': 156 * T, 'fp32': 19.5 * T}),
  Peak('L40S', r'l40s', {'bf16': 362 * T, 'tf32': 183 * T, 'fp32': 91.6 * T}),
  Peak('L4', r'\bl4\b', {'bf16': 121 * T, 'tf32': 60 * T, 'fp32': 30.3 * T}),
  Peak('A10', r'\ba10\b', {'bf16': 125 * T, 'tf32': 62.5 * T, 'fp32': 31.2 * T}),
  Peak('RTX 4090', r'rtx 4090', {'bf16': 165.2 * T, 'tf32': 82.6 * T, 'fp32': 82.6 * T}),
  Peak('RTX 3090', r'rtx 3090', {'bf16': 71 * T, 'tf32': 35.6 * T, 'fp32': 35.6 * T}),
  Peak('V100 SXM2', r'v100.*sxm', {'fp16': 125 * T, 'fp32': 15.7 * T}),
  Peak('V100', r'v100', {'fp16': 112 * T, 'fp32': 14 * T}),
  Peak('T4', r'\bt4\b', {'fp16': 65 * T, 'fp32': 8.1 * T}),
)


def lookup_peak(device_kind: str) -> Peak | None:
  """The first entry of ``PEAKS`` whose pattern ``device_kind`` matches, else None."""
  kind = device_kind.lower()
  return next((p for p in PEAKS if re.search(p.pattern, kind)), None)


def matmul_ceiling(mesh, n: int, repeats: int) -> float:
  """FLOP/s of one device in a float32 [n, n] @ [n, n] at default precision, its rows
  sharded over ``mesh`` (fake CPU devices then share the cores, as in the steps)."""
  a = jax.device_put(jnp.ones((n, n), jnp.float32), NamedSharding(mesh, P('data')))
  b = jax.device_put(jnp.ones((n, n), jnp.float32), NamedSharding(mesh, P()))
  t = median_time(jax.jit(jnp.matmul), a, b, repeats=repeats)
  return 2 * n**3 / t / mesh.size


# --------------------------------------------------------------------------- the rows
def row_configs(reduced: bool, force_accelerator_paths: bool) -> dict:
  """{row: (description, config)}: the experiment configs the rows run, probes cleared
  except in the probe row (reduced: ``--reduced``'s sizes)."""
  width = REDUCED_WIDTH if reduced else 1.0
  out = {}
  for name in ('vgg16', 'vgg11'):
    c = vgg_config('batch')
    c.model, c.model_kwargs.width, c.probes = name, width, ml_collections.ConfigDict()
    out[name] = c
  out['dln'] = dln_config('batch')
  out['dln'].probes = ml_collections.ConfigDict()
  out['probe'] = vgg_config('batch', 'local' if reduced else None)
  if force_accelerator_paths:
    for name in ('vgg16', 'vgg11', 'probe'):
      out[name].model_kwargs.conv_impl = 'xla'
  return {name: (describe(c), c) for name, c in out.items()}


def describe(config: ml_collections.ConfigDict) -> str:
  """'VGG-16 BN, batch 128, width 1' and the like, '+ probes' when the config has some."""
  kw = config.model_kwargs
  if config.model == 'dln':
    return (
      f'DLN BN, {kw.depth} layers {kw.width}x{kw.width}, batch {config.batch_size}, '
      f'{config.steps_per_call} steps a call'
    )
  model = config.model.upper().replace('VGG', 'VGG-')
  probes = ' + probes' if config.probes else ''
  return f'{model} BN, batch {config.batch_size}, width {kw.width:g}{probes}'


def describe_probes(config: ml_collections.ConfigDict) -> str:
  """'activations (2, 5, 8), ics (2, 5), landscape (4 step sizes)' and the like."""
  return ', '.join(
    f'{n} {tuple(p.layers)}'
    if 'layers' in p
    else f'{n} ({len(p.step_size_multipliers)} step sizes)'
    if n == 'landscape'
    else n
    for n, p in config.probes.items()
  )


def trainer_chunk(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(chunk, init, batches) of ``config`` as ``bnjax.train`` builds them.

  chunk(state, batches) -> (state, metrics): ``config.steps_per_call`` steps with the
  config's probes, jitted with the state replicated and donated and the batch sharded
  over the mesh's 'data' axis. init(sample) -> the state at step 0, replicated.
  batches: random host arrays of the dataset's shapes, [steps_per_call, batch, ...].
  """
  model = model_from_config(config, num_classes=None if config.model == 'dln' else 10)
  tx = optax.sgd(config.learning_rate, momentum=config.momentum or None)
  train_step, scan_step = (
    make_train_step(make_objective(m, config.loss), tx, config.learning_rate)
    for m in (model, for_control_flow(model))
  )
  probes = build_probes(config, model, tx)
  chunk = make_train_chunk(train_step, probes, jnp.int32(config.seed), scan_step)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, 'data'))
  jitted = jax.jit(
    chunk,
    in_shardings=(replicated, sharded),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
  init = jax.jit(
    lambda x: TrainState.create(init_variables(model, config.seed, x), tx), out_shardings=replicated
  )
  return jitted, init, random_batches(config)


def random_batches(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """One call's batches: CIFAR-shaped images and labels, or the DLN's own data."""
  k, b = config.steps_per_call, config.batch_size
  if config.model == 'dln':
    split = dln_gaussian(config.seed, b, config.model_kwargs.width).train
    return {
      'inputs': np.broadcast_to(split.inputs, (k, *split.inputs.shape)),
      'targets': np.broadcast_to(split.targets, (k, *split.targets.shape)),
    }
  rng = np.random.default_rng(config.seed)
  return {
    'inputs': rng.standard_normal((k, b, 32, 32, 3), np.float32),
    'targets': rng.integers(0, 10, (k, b)).astype(np.int32),
  }


def xla_flops(cost_analysis) -> float:
  """'flops' of a cost analysis: a dict, or (some jax versions) a list of one dict each."""
  if isinstance(cost_analysis, (list, tuple)):
    return sum(xla_flops(c) for c in cost_analysis)
  return float((cost_analysis or {}).get('flops', math.nan))


def time_chunk(compiled, state, batches, repeats: int, at_step: int | None = None):
  """(median seconds of one call after a warm-up, the state after the last call).

  The state is donated, so each call takes the previous call's; ``at_step``: set its
  step counter before every call (which probes are due depends on it).
  """
  box = [state]

  def call():
    s = box[0]
    if at_step is not None:
      s = s.replace(step=jax.device_put(np.int32(at_step), s.step.sharding))
    box[0], metrics = compiled(s, batches)
    return box[0], metrics

  return median_time(call, repeats=repeats), box[0]


@dataclasses.dataclass
class Row:
  """One row of the table. Times in seconds; flops and memory of one device."""

  name: str
  what: str
  batch: int  # examples per step, all devices
  devices: int
  compile_s: float  # trace + lower + compile of the chunk
  step_s: float  # one step (a DLN call's time / its steps)
  flops: float  # one step on one device: XLA's cost analysis of the compiled program
  lowered_flops: float  # the whole program before partitioning and optimisation
  memory_bytes: float  # XLA's compiled footprint on one device: arguments + outputs + temps
  donated_bytes: float  # outputs written into donated arguments' buffers (the state's)
  peak_bytes_in_use: float | None  # the device's own count so far, where it keeps one
  step_s_not_due: float | None = None  # probe row: the same program where no probe is due
  probes: str = ''  # the probes due (describe_probes)

  def derived(self, peak_flops: float) -> dict:
    """The row as JSON, with examples/s, FLOP/s (all devices) and the fraction of the
    peak of one device, ``peak_flops``."""
    return dict(
      dataclasses.asdict(self),
      examples_per_s=self.batch / self.step_s,
      flops_per_s=self.flops * self.devices / self.step_s,
      peak_flops=peak_flops,
      peak_fraction=self.flops / self.step_s / peak_flops,
    )


def measure(name: str, what: str, config, mesh, repeats: int) -> Row:
  """Compiles and times one row's chunk; the probe row also where no probe is due."""
  jitted, init, host_batches = trainer_chunk(config, mesh)
  state = init(jnp.asarray(host_batches['inputs'][0, :1]))
  batches = jax.device_put(host_batches, NamedSharding(mesh, P(None, 'data')))
  t = time.perf_counter()
  lowered = jitted.lower(state, batches)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  k = config.steps_per_call
  due_at = 0 if config.probes else None  # every probe runs at step 0
  step_s, state = time_chunk(compiled, state, batches, repeats, at_step=due_at)
  not_due = None
  if due_at is not None:
    not_due, state = time_chunk(compiled, state, batches, repeats, at_step=1)
  memory = compiled.memory_analysis()
  stats = mesh.devices.flat[0].memory_stats() or {}
  # XLA's cost analysis counts a loop body once: a DLN call's figure is one step's.
  return Row(
    name,
    what,
    config.batch_size,
    mesh.size,
    compile_s,
    step_s / k,
    xla_flops(compiled.cost_analysis()),
    xla_flops(lowered.cost_analysis()),
    memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    if memory
    else math.nan,
    memory.alias_size_in_bytes if memory else math.nan,
    stats.get('peak_bytes_in_use'),
    not_due and not_due / k,
    describe_probes(config),
  )


def lowered_flops(config, mesh) -> float:
  """XLA's FLOPs of ``config``'s chunk before compilation (tracing only, no compile)."""
  jitted, init, batches = trainer_chunk(config, mesh)
  state = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *batches['inputs'].shape[2:]), jnp.float32))
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches.items()}
  return xla_flops(jitted.lower(state, shapes).cost_analysis())


# ------------------------------------------------------------------------- projection
@dataclasses.dataclass(frozen=True)
class StepTimes:
  """Seconds on this device at the sweep's scale."""

  plain: float  # a train step where no probe is due
  probe: float  # a step with the every-100-steps probes due
  hvp: float  # one Hessian-vector product of a Hessian probe
  compile: float  # one run's compilation


# Hessian-vector products of one call of each Hessian probe, per BN mode probed.
HVPS = {
  'top_eigenvalues': lambda p: p.num_iterations,
  'hessian_trace': lambda p: p.num_samples,
  'spectral_density': lambda p: p.num_probes * p.num_iterations,
}


def schedule_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """What one run of ``config`` does, step by step, as ``bnjax.train`` schedules it.

  steps; plain (no probe due), probe (only probes without Hessian products due), hessian
  (a Hessian probe due) steps; hvps, the Hessian-vector products of those; eval_passes
  over the CIFAR-10 test set (every ``eval_every`` steps from 0, one at the end, and each
  twice for a noisy normaliser: also with the noise at its expectation) and
  eval_examples, the examples they run (padded batches of ``eval_batch_size``).
  """
  probes = {n: Probe(p.every, tuple(p.get('steps', ())), None) for n, p in config.probes.items()}
  counts = dict(steps=config.num_steps, plain=0, probe=0, hessian=0, hvps=0)
  for step in range(config.num_steps):
    due = [n for n, probe in probes.items() if probe.due(step)]
    hvps = sum(
      HVPS[n](config.probes[n]) * (2 if config.probes[n].get('bn_mode') == 'both' else 1)
      for n in due
      if n in HVPS
    )
    counts['hvps'] += hvps
    counts['hessian' if hvps else 'probe' if due else 'plain'] += 1
  evals = (math.ceil(config.num_steps / config.eval_every) if config.eval_every else 0) + 1
  counts['eval_passes'] = evals * (2 if config.norm in NOISY else 1)
  batches = math.ceil(CIFAR10_TEST_EXAMPLES / config.eval_batch_size)
  counts['eval_examples'] = counts['eval_passes'] * batches * config.eval_batch_size
  return counts


def project(configs: list, times: StepTimes) -> dict:
  """The sweep's wall time on this device, runs one after another: {'parts', 'total_s'}.

  Each part: [what, count, seconds each, seconds]. A Hessian probe step costs a probe
  step plus its Hessian-vector products; an evaluation pass ``FORWARD_IN_STEPS`` of a
  train step per example.
  """
  total = {}
  for config in configs:
    for k, v in schedule_counts(config).items():
      total[k] = total.get(k, 0) + v
  batch = statistics.mean(c.batch_size for c in configs)
  per_pass = total['eval_examples'] / max(total['eval_passes'], 1) / batch
  parts = [
    ['plain steps', total['plain'], times.plain],
    ['probe steps (every-100 probes due)', total['probe'], times.probe],
    ['Hessian probe steps (as a probe step)', total['hessian'], times.probe],
    [
      f'  + their Hessian-vector products (~{HVP_IN_GRADIENTS:g} probe gradients each)',
      total['hvps'],
      times.hvp,
    ],
    [
      f'eval passes ({per_pass:g} train batches of examples, forward '
      f'~{FORWARD_IN_STEPS:.2g} of a step)',
      total['eval_passes'],
      per_pass * FORWARD_IN_STEPS * times.plain,
    ],
    ['compilation, once per run', len(configs), times.compile],
  ]
  parts = [[what, n, each, n * each] for what, n, each in parts]
  return {
    'runs': len(configs),
    'steps': total['steps'],
    'parts': parts,
    'total_s': sum(p[3] for p in parts),
  }


def probe_gradients(config: ml_collections.ConfigDict) -> float:
  """Gradients a step of ``config`` with its every-100 probes due computes beyond its own:
  one per landscape step size and per ICS layer, a forward pass for the activations."""
  p = config.probes
  return (
    (len(p.landscape.step_size_multipliers) if 'landscape' in p else 0)
    + (len(p.ics.layers) if 'ics' in p else 0)
    + (FORWARD_IN_STEPS if 'activations' in p else 0)
  )


def paper_step_times(
  rows: dict, probe_config, reduced: bool, force: bool, mesh
) -> tuple[StepTimes, str]:
  """The projection's step times from the measured rows (``Row.derived``), and how.

  Full size: the probe row is the paper's program, timed with and without probes due.
  Reduced: the paper's VGG-16 step is the measured one scaled by XLA's FLOP ratio of the
  two programs (as if it ran at the same FLOP/s), a probe step that times the probe row's
  probe/plain ratio. A Hessian-vector product: ``HVP_IN_GRADIENTS`` of the probe step's
  gradients, whose cost is its time over a plain step's / ``probe_gradients``.
  """
  probe = rows['probe']
  hvp_share = HVP_IN_GRADIENTS / probe_gradients(probe_config)
  if not reduced:
    plain, due = probe['step_s_not_due'], probe['step_s']
    return (
      StepTimes(plain, due, max(due - plain, 0) * hvp_share, probe['compile_s']),
      "probe row with and without probes due; compilation: the probe row's",
    )
  paper = vgg_config('batch')
  paper.probes = ml_collections.ConfigDict()
  if force:
    paper.model_kwargs.conv_impl = 'xla'
  scale = lowered_flops(paper, mesh) / rows['vgg16']['lowered_flops']
  plain = rows['vgg16']['step_s'] * scale
  ratio = probe['step_s'] / probe['step_s_not_due']
  note = (
    f'reduced sizes: plain step = the measured {rows["vgg16"]["what"]} step x {scale:.1f} '
    "(XLA's FLOPs of the paper's program / of the measured one) as if at the same "
    'FLOP/s, which small widths keep low: it errs long; probe step = plain x '
    f"{ratio:.2f} (the probe row, due / not due); compilation: the probe row's "
    '(reduced config)'
  )
  hvp = max(ratio - 1, 0) * plain * hvp_share
  return StepTimes(plain, plain * ratio, hvp, probe['compile_s']), note


# ------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--reduced',
    action=argparse.BooleanOptionalAction,
    default=None,
    help='small sizes (default: on CPU only)',
  )
  parser.add_argument(
    '--devices', type=int, default=0, help='data-parallel over the first N local devices (0: all)'
  )
  parser.add_argument('--json', default='', help='also write the table as JSON here')
  parser.add_argument('--rows', default=','.join(ROWS), help=f'a subset of {",".join(ROWS)}')
  parser.add_argument(
    '--repeats', type=int, default=0, help='timed repetitions per row (0: 3 reduced, 20 otherwise)'
  )
  parser.add_argument(
    '--force-accelerator-paths',
    action='store_true',
    help="on CPU, take an accelerator's code paths where bnjax has a switch",
  )
  args = parser.parse_args(argv)
  args.rows = [r for r in args.rows.split(',') if r]
  unknown = sorted(set(args.rows) - set(ROWS))
  if unknown:
    parser.error(f'unknown rows {unknown}; valid: {", ".join(ROWS)}')
  return args


def measure_rows(args, mesh, reduced: bool, repeats: int) -> tuple[dict, dict, dict]:
  """(rows, their configs {row: (what, config)}, the peak the fractions compare with).

  The peak: the table's for this device kind; else the float32 matmul rate, measured
  beside each row (right after it), as a shared machine's speed drifts between rows.
  """
  table = lookup_peak(mesh.devices.flat[0].device_kind)
  n = 2048 if reduced else 4096
  if args.force_accelerator_paths:  # before any model or probe is built
    os.environ[ASSUME_BACKEND] = 'tpu'
  rows, peaks, configs = {}, {}, row_configs(reduced, args.force_accelerator_paths)
  for name, (what, config) in configs.items():
    if name not in args.rows:
      continue
    if config.batch_size % mesh.size:
      sys.exit(f'row {name}: batch {config.batch_size} is not divisible by {mesh.size} devices')
    rows[name] = measure(name, what, config, mesh, repeats)
    peaks[name] = table.step_flops if table else matmul_ceiling(mesh, n, repeats)
    print(f'  {name}: {rows[name].step_s * 1e3:.1f} ms a step', file=sys.stderr, flush=True)
  if table:
    peak = {
      'flops': table.step_flops,
      'precision': table.step_precision,
      'table': table.flops,
      'source': f'{table.chip}, vendor dense peak at {table.step_precision} (the '
      "precision of a float32 matmul at JAX's default on it)",
    }
  else:
    peak = {
      'flops': statistics.median(peaks.values()) if peaks else math.nan,
      'table': None,
      'precision': 'float32 at default precision',
      'source': f'not in the table: measured, a float32 {n}x{n} matmul at default '
      f'precision sharded like the steps, median of {repeats}, beside each '
      'row (the median of those)',
    }
  return {name: row.derived(peaks[name]) for name, row in rows.items()}, configs, peak


def run_check(args) -> dict:
  """Measures the rows and projects the paper VGG set; the report as a JSON-able dict."""
  t0 = time.perf_counter()
  devices = jax.local_devices()[: args.devices or None]
  if args.devices and len(devices) < args.devices:
    sys.exit(f'--devices={args.devices}, but this host has {len(devices)} local devices')
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)
  reduced = jax.default_backend() == 'cpu' if args.reduced is None else args.reduced
  repeats = args.repeats or (3 if reduced else 20)
  rows, configs, peak = measure_rows(args, mesh, reduced, repeats)
  report = {
    'backend': jax.default_backend(),
    'device_kind': devices[0].device_kind,
    'devices': mesh.size,
    'reduced': reduced,
    'repeats': repeats,
    'forced_accelerator_paths': list(FORCED) if args.force_accelerator_paths else [],
    'compilation_cache': jax.config.jax_compilation_cache_dir or None,
    'peak': peak,
    'rows': list(rows.values()),
    'projection': None,
  }
  if {'vgg16', 'probe'} <= rows.keys():
    times, note = paper_step_times(
      rows, configs['probe'][1], reduced, args.force_accelerator_paths, mesh
    )
    sweep = [run.config for run in load_sweep(str(PAPER_VGG_SWEEP), root='unused')]
    report['projection'] = dict(
      project(sweep, times),
      note=note,
      times=dataclasses.asdict(times),
      sweep=str(PAPER_VGG_SWEEP.relative_to(ROOT)),
    )
  report['wall_s'] = time.perf_counter() - t0
  return report


def si(x: float | None, unit: str = '') -> str:
  """1.23e10 -> '12.3 G' + unit; None or NaN -> 'n/a'."""
  if x is None or not math.isfinite(x):
    return 'n/a'
  for factor, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= factor:
      return f'{x / factor:.3g} {prefix}{unit}'
  return f'{x:.3g} {unit}'.rstrip()


def duration(s: float) -> str:
  if s < 1:
    return f'{s * 1e3:.3g} ms'
  if s < 120:
    return f'{s:.3g} s'
  return f'{s / 60:.3g} min' if s < 7200 else f'{s / 3600:.3g} h'


def mib(b: float | None) -> str:
  return 'n/a' if b is None or not math.isfinite(b) else f'{b / 2**20:.0f} MiB'


def format_report(r: dict) -> str:
  """The report as the table the command prints."""
  peak = r['peak']
  sizes = 'REDUCED sizes (--reduced)' if r['reduced'] else 'paper sizes'
  lines = [
    f'bnjax accelerator check: {r["backend"]}, {r["devices"]} x {r["device_kind"]!r}, '
    f"data-parallel over a 'data' mesh axis; {sizes}; median of {r['repeats']} after a "
    'warm-up',
    "precision: float32; train steps at JAX's default matmul precision (bnjax sets none), "
    "probes at 'highest'",
    f'peak of one device: {si(peak["flops"], "FLOP/s")} ({peak["source"]})',
    f'compilation cache: {r["compilation_cache"] or "off"}',
  ]
  for text in r['forced_accelerator_paths']:
    lines.append(f'forced on CPU: {text}')
  header = (
    'row',
    'what',
    'compile',
    'step',
    'examples/s',
    'FLOP/step',
    'FLOP/s',
    'of peak',
    'XLA memory',
    'peak in use',
  )
  table = [header]
  for row in r['rows']:
    table.append(
      (
        row['name'],
        row['what'],
        duration(row['compile_s']),
        duration(row['step_s']),
        f'{row["examples_per_s"]:,.0f}',
        si(row['flops'] * row['devices']),
        si(row['flops_per_s']),
        f'{row["peak_fraction"]:.3f}',
        mib(row['memory_bytes']),
        mib(row['peak_bytes_in_use']),
      )
    )
  widths = [max(len(t[i]) for t in table) for i in range(len(header))]
  lines += [''] + ['  '.join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table]
  lines.append(
    'FLOP/step and FLOP/s: all devices; of peak: one device against its peak. XLA '
    'memory: compiled arguments + outputs + temporaries of one device; peak in use: '
    "the device's own count so far (n/a: this backend keeps none)"
  )
  for row in r['rows']:
    if row['step_s_not_due'] is not None:
      lines.append(
        f'{row["name"]}: probes due: {row["probes"]}; the same program at a step '
        f'where none is due (99 steps in 100): {duration(row["step_s_not_due"])}'
      )
  lines += format_projection(r['projection'], r['devices'])
  lines.append(f'check wall time: {r["wall_s"]:.0f} s (after imports)')
  return '\n'.join(lines)


def format_projection(p: dict | None, devices: int) -> list[str]:
  if p is None:
    return ['', 'projection: needs the rows vgg16 and probe']
  lines = [
    '',
    f'projected wall time of the paper-scale VGG set ({p["sweep"]}) on {devices} '
    f'device(s), runs one after another: {p["runs"]} runs, {p["steps"]:,} steps',
  ]
  for what, n, each, total in p['parts']:
    lines.append(f'  {what:<70} {n:>9,} x {duration(each):>9} = {duration(total)}')
  lines.append(f'  {"total":<70} {"":>23} {duration(p["total_s"])}')
  lines.append(f'  ({p["note"]}; checkpoints and input not counted)')
  return lines


def main(argv=None) -> None:
  args = parse_args(argv)
  report = run_check(args)
  print(format_report(report))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + '\n')


if __name__ == '__main__':
  main()
