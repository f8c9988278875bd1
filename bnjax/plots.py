r"""The paper's figures from workdirs' metrics.jsonl (reads only what train wrote).

  python -m bnjax.plots --out=figs runs/vgg_standard runs/vgg_bn runs/vgg_noisy

Writes, for the runs given (one line or band per run, labelled by its directory name):
  training.png     train loss and accuracy, eval accuracy (Figs. 1, 2, 5)
  landscape.png    loss band, gradient-predictiveness band, effective beta (Figs. 4, 10, 12, 13)
  ics.png          ||G - G'|| and cos(G, G') per probed layer (Fig. 3)
  activations.png  one unit's mean and variance per probed layer over training (Fig. 8)
A run whose status.json says diverged is drawn to its last step and marked with an x.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402


def load_run(workdir: str | pathlib.Path) -> dict:
  """{'name', 'status', 'lines': [metric dicts by step]} of one workdir."""
  workdir = pathlib.Path(workdir)
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines() if l]
  status_file = workdir / 'status.json'
  status = json.loads(status_file.read_text()) if status_file.exists() else {}
  return {'name': workdir.name, 'status': status, 'lines': lines}


def series(run: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of every line that has ``key``; values may be 2-D for list metrics."""
  pts = [(l['step'], l[key]) for l in run['lines'] if key in l]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pts)
  return np.asarray(steps), np.asarray(values, dtype=np.float64)


def _mark_divergence(ax, run, steps, values, color):
  if run['status'].get('state') == 'diverged' and len(steps):
    finite = np.isfinite(values)
    if finite.any():
      i = np.nonzero(finite)[0][-1]
      ax.plot(steps[i], values[i], 'x', color=color, markersize=10, mew=2)


def plot_training(runs, out: pathlib.Path) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for i, run in enumerate(runs):
    color = f'C{i}'
    for ax, key in zip(axes, ('train_loss', 'train_accuracy', 'eval_accuracy')):
      steps, values = series(run, key)
      label = run['name'] + (' (diverged)' if run['status'].get('state') == 'diverged' else '')
      ax.plot(steps, values, color=color, label=label, lw=1)
      _mark_divergence(ax, run, steps, values, color)
      ax.set_title(key)
      ax.set_xlabel('step')
  axes[0].set_yscale('log')
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out / 'training.png', dpi=120)
  plt.close(fig)


def plot_landscape(runs, out: pathlib.Path) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for i, run in enumerate(runs):
    color = f'C{i}'
    for ax, key in zip(axes[:2], ('probe/landscape/loss', 'probe/landscape/grad_diff')):
      steps, values = series(run, key)
      if values.ndim == 2:
        ax.fill_between(steps, np.nanmin(values, 1), np.nanmax(values, 1), color=color,
                        alpha=0.4, label=run['name'])
    steps, beta = series(run, 'probe/landscape/beta')
    axes[2].plot(steps, beta, color=color, label=run['name'])
  for ax, title in zip(axes, ('loss landscape: L(theta - eta g)',
                              'gradient predictiveness: ||grad L(theta - eta g) - g||',
                              'effective beta-smoothness')):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step')
    ax.set_yscale('log')
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out / 'landscape.png', dpi=120)
  plt.close(fig)


def plot_ics(runs, out: pathlib.Path) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for i, run in enumerate(runs):
    for ax, key in zip(axes, ('probe/ics/l2', 'probe/ics/cosine')):
      steps, values = series(run, key)
      if values.ndim != 2:
        continue
      for j in range(values.shape[1]):
        ax.plot(steps, values[:, j], color=f'C{i}', ls=('-', '--', ':', '-.')[j % 4],
                label=f'{run["name"]} layer {j + 1} of probed')
  axes[0].set_title("||G - G'|| (ideal 0)")
  axes[1].set_title("cos(G, G') (ideal 1)")
  axes[0].set_yscale('log')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / 'ics.png', dpi=120)
  plt.close(fig)


def plot_activations(runs, out: pathlib.Path) -> None:
  keys = sorted({k for r in runs for l in r['lines'] for k in l
                 if k.startswith('probe/activations/') and k.endswith('/mean')})
  if not keys:
    return
  fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 6), squeeze=False)
  for col, key in enumerate(keys):
    layer = key.split('/')[2]
    for i, run in enumerate(runs):
      for row, stat in enumerate(('mean', 'var')):
        steps, values = series(run, f'probe/activations/{layer}/{stat}')
        axes[row, col].plot(steps, values, color=f'C{i}', label=run['name'])
        axes[row, col].set_title(f'{layer}: one unit\'s batch {stat}', fontsize=10)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / 'activations.png', dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='figs')
  args = parser.parse_args(argv)
  runs = [load_run(w) for w in args.workdirs]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  plot_training(runs, out)
  plot_landscape(runs, out)
  plot_ics(runs, out)
  plot_activations(runs, out)
  print(f'figures in {out}/')


if __name__ == '__main__':
  main()
