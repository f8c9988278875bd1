"""Figures beyond the paper: sharpness, spectra, theorems, weights, LayerNorm, the edge of
stability across learning rates, and the landscape compared at equal training loss."""

import numpy as np

from bnjax.plots import measures, panels
from bnjax.plots.panels import need
from bnjax.plots.paper import DLN_LR, STANDARD_BN, VGG_LR, landscape_panels
from bnjax.plots.runs import NORM_LABELS, Group, select


def _by_model_and_lr(groups: list[Group]) -> dict[tuple[str, float], list[Group]]:
  """{(family, lr): groups}, VGG first, larger learning rates first: one panel each."""
  keys = sorted({(g.family, g.lr) for g in groups}, key=lambda fl: (fl[0] != 'vgg', -fl[1]))
  return {(f, lr): [g for g in groups if g.family == f and np.isclose(g.lr, lr)] for f, lr in keys}


def _panels(n: int, height: float = 3.2):
  cols = min(n, 4)
  fig, axes = panels.subplots(-(-n // cols), cols, height=height)
  for ax in list(axes.flat)[n:]:
    ax.axis('off')
  return fig, list(axes.flat)


def sharpness(groups):
  """Top Hessian eigenvalue over training against 2/LR (edge of stability), every
  normaliser probed; BN-like losses in train mode (solid) and eval mode (dashed)."""
  chosen = need(
    [g for g in groups if g.has('probe/top_eigenvalues/eigenvalues')],
    'sharpness (runs with the top_eigenvalues probe)',
  )
  by_panel = _by_model_and_lr(chosen)
  fig, axes = _panels(len(by_panel))
  for ax, ((family, lr), at) in zip(axes, by_panel.items()):
    for g in at:
      panels.seed_curve(ax, g, 'probe/top_eigenvalues/eigenvalues', column=0, label=g.label(False))
      if g.norm not in ('none', 'layer') and g.has('probe/top_eigenvalues/eval_eigenvalues'):
        panels.seed_curve(
          ax,
          g,
          'probe/top_eigenvalues/eval_eigenvalues',
          column=0,
          ls='--',
          label=f'{g.label(False)}, eval mode',
        )
    ax.axhline(2 / lr, color='k', ls=':', lw=1, label=f'2/LR = {2 / lr:g}')
    ax.set(
      title=f'{family.upper()}, LR {lr:g}',
      xlabel='training step',
      ylabel=r'top Hessian eigenvalue $\lambda_{max}$',
      yscale='log',
    )
    panels.legend_below(ax, ncol=1)
  return panels.finish(fig, 'Sharpness over training against 2/LR (Cohen et al. 2021)')


def _density_bins(nodes: np.ndarray, linthresh: float) -> np.ndarray:
  top = max(np.nanmax(np.abs(nodes)), 10 * linthresh) * 1.05
  outer = np.geomspace(linthresh, top, 30)
  return np.concatenate([-outer[::-1], np.linspace(-linthresh, linthresh, 9)[1:-1], outer])


def density(groups):
  """The Hessian's spectral density (SLQ weights per bin, averaged over seeds) at the first
  and last probed step, on a symmetric log axis: the bulk near 0 and the outliers."""
  chosen = [
    g
    for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR))
    for g in select(groups, f, STANDARD_BN, lr)
    if g.has('probe/spectral_density/nodes')
  ]
  chosen = need(chosen, 'density (standard and BN runs with the spectral_density probe)')
  fig, axes = panels.subplots(1, len(chosen), height=3.3)
  for ax, g in zip(axes[0], chosen):
    _, nodes = g.stack('probe/spectral_density/nodes')
    _, weights = g.stack('probe/spectral_density/weights')
    linthresh = max(np.nanmax(np.abs(nodes)) * 1e-4, 1e-12)
    bins = _density_bins(nodes, linthresh)
    for i, style in ((0, '-'), (nodes.shape[1] - 1, '--')):
      hist = np.mean(
        [
          np.histogram(n[i].ravel(), bins, weights=w[i].ravel())[0]
          for n, w in zip(nodes, weights)
          if np.isfinite(n[i]).all()
        ],
        0,
      )
      ax.stairs(
        np.maximum(hist, 1e-9),
        bins,
        color=g.color,
        ls=style,
        lw=1,
        label='first step' if i == 0 else 'last step',
      )
    ax.set_xscale('symlog', linthresh=linthresh)
    ax.set(
      title=f'{g.family.upper()}, LR {g.lr:g}:\n{g.label(False)}',
      xlabel='eigenvalue',
      ylabel='SLQ weight per bin (log)',
      yscale='log',
      ylim=(1e-6, 1.5),
    )
    ax.title.set_fontsize(8)
    ax.tick_params(axis='x', labelsize=6, rotation=40)
    ax.legend(fontsize=6)
  return panels.finish(fig, 'Hessian eigenvalue density at the first and last step')


def theorems(groups):
  """Theorem 4.1's largest relative gap and Theorem 4.2's smallest slack over every unit
  and probed layer, at each probed step; a line per seed."""
  chosen = [
    g
    for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR))
    for g in select(groups, f, ('batch',), lr)
    if panels.layers_of([g], 'bn_theorems')
  ]
  chosen = need(chosen, 'theorems (BN runs with the bn_theorems probe)')
  fig, axes = panels.subplots(1, 2, height=3.2)
  for g in chosen:
    color = 'C1' if g.family == 'vgg' else 'C3'
    for i, r in enumerate(g.runs):
      steps, gap, slack = _theorem_series(r)
      label = f'{g.family.upper()}, LR {g.lr:g}' if i == 0 else None
      axes[0, 0].plot(steps, gap, color=color, lw=0.8, alpha=0.8, label=label)
      axes[0, 1].plot(steps, slack, color=color, lw=0.8, alpha=0.8, label=label)
  axes[0, 0].set(
    title='Thm 4.1 (an equality): largest gap',
    xlabel='training step',
    ylabel='max over units and layers\n|lhs - rhs| / lhs',
    yscale='log',
  )
  axes[0, 1].set(
    title='Thm 4.2: smallest slack of the bound',
    xlabel='training step',
    ylabel='min over units and layers\n(bound - value) / |bound|',
  )
  axes[0, 1].axhline(0, color='gray', lw=0.8)
  axes[0, 0].legend(fontsize=6)
  return panels.finish(fig, 'Theorems 4.1 and 4.2 measured during training (a line per seed)')


def _theorem_series(run):
  """(steps, Thm 4.1 max gap, Thm 4.2 min slack) over every unit and layer at each step."""
  gaps, slacks, steps = [], [], None
  for k in panels.layers_of_run(run, 'bn_theorems'):
    steps, lhs = run.series(f'probe/bn_theorems/layer{k}/grad_y_sq')
    _, rhs = run.series(f'probe/bn_theorems/layer{k}/thm41_rhs')
    _, curv = run.series(f'probe/bn_theorems/layer{k}/curvature_y')
    _, bound = run.series(f'probe/bn_theorems/layer{k}/thm42_rhs')
    with np.errstate(all='ignore'):
      gaps.append(np.max(np.abs(lhs - rhs) / np.maximum(np.abs(lhs), 1e-30), 1))
      slacks.append(np.min((bound - curv) / np.maximum(np.abs(bound), 1e-30), 1))
  return steps, np.max(gaps, 0), np.min(slacks, 0)


def _relative_distance(key):
  def series(run):
    steps, d = run.series(f'probe/weight_distance/{key}')
    _, n0 = run.series('probe/weight_distance/init_norm')
    if d.ndim != 2:
      return np.zeros(0), np.zeros(0)
    return steps, np.sqrt(np.sum(d**2, 1) / np.sum(n0**2, 1))

  return series


def weights(groups):
  """Lemma 4.5's setting: distance of the weights from their initialisation, raw (solid)
  and with each unit's scale removed (dashed); one panel per model and LR."""
  chosen = need(
    [
      g for g in groups if g.norm in STANDARD_BN + ('layer',) and g.has('probe/weight_distance/raw')
    ],
    'weights (standard, BN or LayerNorm runs with the weight_distance probe)',
  )
  by_panel = _by_model_and_lr(chosen)
  fig, axes = _panels(len(by_panel), height=3.6)
  for ax, ((family, lr), at) in zip(axes, by_panel.items()):
    for g in at:
      for key, ls, what in (('raw', '-', ''), ('scale_free', '--', ', scale removed')):
        panels.seed_curve(ax, g, _relative_distance(key), ls=ls, label=g.label(False) + what)
    ax.set(
      title=f'{family.upper()}, LR {lr:g}',
      xlabel='training step',
      ylabel=r'$\|W_t - W_0\|_F / \|W_0\|_F$, all layers',
    )
    panels.legend_below(ax, ncol=1)
  return panels.finish(fig, 'How far training moves the weights from the initialisation')


def layernorm(groups):
  """LayerNorm beside standard and BN: training curve and the three landscape panels."""
  rows = []
  for family, lr in (('vgg', VGG_LR), ('dln', DLN_LR)):
    chosen = select(groups, family, ('none', 'batch', 'layer'), lr)
    if any(g.norm == 'layer' for g in chosen):
      rows.append(chosen)
  if not rows:
    raise panels.NoData('layernorm needs runs with norm layer')
  fig, axes = panels.subplots(len(rows), 4)
  for row, chosen in enumerate(rows):
    for g in chosen:
      panels.training(axes[row, 0], g)
    axes[row, 0].set_title(f'{chosen[0].family.upper()}: training')
    landscape_panels(axes[row, 1:], [g for g in chosen if g.has('probe/landscape/loss')])
  return panels.finish(fig, 'LayerNorm under the same probes')


EOS_MEASURES = (
  (r'median effective $\beta$ $\times$ LR / 2', measures.beta_lr_2, 'log'),
  (r'final sharpness $\lambda_{max}$ $\times$ LR / 2', measures.sharpness_lr_2, 'log'),
  (
    "median $\\|G - G'\\| / \\|G\\|$, first ICS layer",
    lambda r: measures.ics_median(r, 'relative', 0),
    'log',
  ),
  (
    "median $\\|G - G'\\| / \\|G\\|$, second ICS layer",
    lambda r: measures.ics_median(r, 'relative', 1),
    'log',
  ),
)


def eos(groups):
  """Standard and BN DLNs across learning rates: effective beta and sharpness in units of
  2/LR (1 = the edge of stability) and the relative ICS; a dot per seed, a line through
  the means."""
  chosen = need(
    [g for g in select(groups, 'dln', STANDARD_BN) if g.has('probe/landscape/beta')],
    'eos (standard and BN DLN runs with the landscape probe)',
  )
  if len({g.lr for g in chosen}) < 2:
    raise panels.NoData('eos needs standard or BN DLN runs at two learning rates or more')
  fig, axes = panels.subplots(1, len(EOS_MEASURES), height=3.2)
  for ax, (title, measure, scale) in zip(axes[0], EOS_MEASURES):
    for norm in STANDARD_BN:
      at = sorted((g for g in chosen if g.norm == norm), key=lambda g: g.lr)
      if not at:
        continue
      means = []
      for g in at:
        values = [measure(r) for r in g.runs]
        ax.plot([g.lr] * len(values), values, '.', color=g.color, alpha=0.6)
        means.append(measures.over_seeds(g, measure).mean)
      seeds = '/'.join(sorted({str(len(g.runs)) for g in at}))
      ax.plot(
        [g.lr for g in at],
        means,
        '-',
        color=at[0].color,
        label=f'{NORM_LABELS.get(norm, norm)} ({seeds} seeds)',
      )
    if 'LR / 2' in title:
      ax.axhline(1, color='k', ls=':', lw=0.8, label='edge of stability')
    ax.set(title=title, xlabel='learning rate', xscale='log', yscale=scale)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
  return panels.finish(
    fig, 'Deep linear network across learning rates: how much is the edge of stability?'
  )


def matched(groups):
  """Gradient predictiveness and effective beta against the training loss at the probed
  step, standard vs BN: the networks compared at equal loss, not equal step (read
  vertically); a line per seed. VGG at LR 0.1, the DLN at LR 1e-6 and 1e-7."""
  rows = [
    (f, lr)
    for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR), ('dln', 1e-7))
    if any(
      g.has('probe/landscape/beta')
      for g in select(groups, f, STANDARD_BN, lr)
      if np.isclose(g.lr, lr)
    )
  ]
  need(rows, 'matched (standard and BN runs with the landscape probe)')
  fig, axes = panels.subplots(len(rows), 2, height=3.0)
  for row, (family, lr) in enumerate(rows):
    for g in select(groups, family, STANDARD_BN, lr):
      for i, r in enumerate(g.runs):
        stats = measures.landscape_row_stats(r)
        if not stats:
          continue
        label = g.label(False) if i == 0 else None
        for ax, field in zip(axes[row], ('grad_pred', 'beta')):
          ax.plot(
            stats['loss'], stats[field], '.', color=g.color, markersize=2, alpha=0.5, label=label
          )
    for ax, what in zip(
      axes[row], (r'max$_\eta \|\nabla L(\theta-\eta g) - g\|$', r'effective $\beta$')
    ):
      ax.set(
        title=f'{family.upper()}, LR {lr:g}: {what}',
        xlabel=r'training loss $L(\theta_t)$',
        xscale='log',
        yscale='log',
      )
      ax.invert_xaxis()  # training runs left to right
      ax.title.set_fontsize(8)
    axes[row, 0].legend(fontsize=6, markerscale=4)
  return panels.finish(fig, 'The landscape at equal training loss (a dot per probed step and seed)')


BEYOND = {
  'sharpness': sharpness,
  'density': density,
  'theorems': theorems,
  'weights': weights,
  'layernorm': layernorm,
  'eos': eos,
  'matched': matched,
}
