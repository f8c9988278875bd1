"""What runs wrote, read back: config.json, metrics.jsonl, status.json (nothing else).

A ``Run`` knows its label (variant and learning rate, from config.json, never from the
directory name), whether it diverged, and the series of any metric. A ``Group`` is one
configuration at every seed it was run with (runs whose config.json differ in the seed
alone); figures and numbers draw and quote groups: mean and min-max over the seeds.
"""

import dataclasses
import json
import pathlib

import numpy as np

from bnjax import workdir as workdir_lib

NORM_LABELS = {
  'none': 'Standard',
  'batch': 'Standard + BatchNorm',
  'noisy_batch': 'Standard + "Noisy" BN',
  'noise': 'Standard + noise (no BN)',
  'lp1': r'Standard + $\ell_1$',
  'lp2': r'Standard + $\ell_2$',
  'lpinf': r'Standard + $\ell_\infty$',
  'layer': 'Standard + LayerNorm',
}
# The paper's colours: standard blue, BN orange, then the rest.
NORM_COLORS = {
  'none': 'C0',
  'batch': 'C1',
  'noisy_batch': 'C2',
  'lp1': 'C3',
  'lp2': 'C4',
  'lpinf': 'C5',
  'layer': 'C6',
  'noise': 'C7',
}


@dataclasses.dataclass
class Run:
  path: pathlib.Path
  config: dict
  status: dict
  lines: list[dict]

  @property
  def norm(self) -> str:
    return self.config['norm']

  @property
  def lr(self) -> float:
    return float(self.config['learning_rate'])

  @property
  def seed(self) -> int:
    return int(self.config.get('seed', 0))

  @property
  def family(self) -> str:
    """'dln' or 'vgg' (any VGG layout)."""
    return 'dln' if self.config['model'] == 'dln' else 'vgg'

  @property
  def diverged(self) -> bool:
    return self.status.get('state') == 'diverged'

  @property
  def color(self) -> str:
    return NORM_COLORS.get(self.norm, 'k')

  def label(self, with_lr: bool = True) -> str:
    text = NORM_LABELS.get(self.norm, self.norm)
    if with_lr:
      text += f', LR {self.lr:g}'
    return text + (' (diverged)' if self.diverged else '')

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [T], values [T, ...]) of every line with ``key``; None entries become NaN."""
    pts = [(l['step'], l[key]) for l in self.lines if key in l]
    if not pts:
      return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts)
    values = [np.nan if v is None else v for v in values]
    return np.asarray(steps), np.asarray(values, dtype=np.float64)

  def has(self, key: str) -> bool:
    return any(key in l for l in self.lines)


def load_run(workdir: str | pathlib.Path) -> Run:
  """The run in ``workdir``; raises FileNotFoundError naming what is missing."""
  workdir = pathlib.Path(workdir)
  for name in ('config.json', 'metrics.jsonl'):
    if not (workdir / name).exists():
      raise FileNotFoundError(f'{workdir} has no {name}: not a bnjax workdir, or never started')
  lines = workdir_lib.read_metrics(workdir)  # without a last line cut short by a kill
  status_file = workdir / 'status.json'
  status = json.loads(status_file.read_text()) if status_file.exists() else {}
  return Run(workdir, json.loads((workdir / 'config.json').read_text()), status, lines)


def find_runs(root: str | pathlib.Path) -> list[Run]:
  """Every workdir under ``root`` (any depth), sorted by path."""
  return [
    load_run(p.parent)
    for p in sorted(pathlib.Path(root).rglob('config.json'))
    if (p.parent / 'metrics.jsonl').exists()
  ]


def select(runs: list[Run], family: str, norms=None, lr: float | None = None) -> list[Run]:
  """Runs of a model family, with the given normalisers (in that order), at ``lr``.

  ``lr``: the figure's learning rate; when no run has it, runs at any rate are kept (so
  a user's own sweep still draws).
  """
  chosen = [r for r in runs if r.family == family and (norms is None or r.norm in norms)]
  if lr is not None and any(np.isclose(r.lr, lr) for r in chosen):
    chosen = [r for r in chosen if np.isclose(r.lr, lr)]
  if norms is not None:
    chosen.sort(key=lambda r: (list(norms).index(r.norm), r.lr))
  return chosen


def _setting(run: Run) -> str:
  """The run's config without its seed, as a key: runs with equal keys are seeds of one setting."""
  return json.dumps({k: v for k, v in run.config.items() if k != 'seed'}, sort_keys=True)


@dataclasses.dataclass
class Group:
  """One configuration's runs, one per seed (sorted by seed)."""

  runs: list[Run]

  @property
  def first(self) -> Run:
    return self.runs[0]

  norm = property(lambda self: self.first.norm)
  lr = property(lambda self: self.first.lr)
  family = property(lambda self: self.first.family)
  color = property(lambda self: self.first.color)
  config = property(lambda self: self.first.config)

  @property
  def seeds(self) -> list[int]:
    return [r.seed for r in self.runs]

  @property
  def num_diverged(self) -> int:
    return sum(r.diverged for r in self.runs)

  def label(self, with_lr: bool = True) -> str:
    text = NORM_LABELS.get(self.norm, self.norm)
    if with_lr:
      text += f', LR {self.lr:g}'
    n = len(self.runs)
    text += f' ({n} seed{"s" if n > 1 else ""}'
    return text + (f', {self.num_diverged} diverged)' if self.num_diverged else ')')

  def has(self, key: str) -> bool:
    return any(r.has(key) for r in self.runs)

  def stack(self, key) -> tuple[np.ndarray, np.ndarray]:
    """(steps [T], values [S, T, ...]) over the union of the seeds' steps; NaN where a seed
    has no value (it diverged earlier, or probed elsewhere). ``key``: a metric name, or a
    function run -> (steps, values) for a derived series."""
    series = [key(r) if callable(key) else r.series(key) for r in self.runs]
    series = [(s, v) for s, v in series if len(s)]
    if not series:
      return np.zeros(0), np.zeros((0, 0))
    steps = np.unique(np.concatenate([s for s, _ in series]))
    shape = series[0][1].shape[1:]
    out = np.full((len(series), len(steps)) + shape, np.nan)
    for i, (s, v) in enumerate(series):
      if v.shape[1:] == shape:
        out[i, np.searchsorted(steps, s)] = v
    return steps, out


def group_runs(runs: list) -> list[Group]:
  """Runs (or groups, flattened) grouped by configuration, in the order of their first run."""
  flat = [r for x in runs for r in (x.runs if isinstance(x, Group) else [x])]
  by_setting: dict[str, list[Run]] = {}
  for r in flat:
    by_setting.setdefault(_setting(r), []).append(r)
  return [Group(sorted(rs, key=lambda r: r.seed)) for rs in by_setting.values()]
