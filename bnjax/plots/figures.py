"""The paper's figures (and the beyond-the-paper panels), each a function of runs -> Figure.

Every function takes all candidate runs and picks the ones its figure shows (model
family, normalisers, the paper's learning rate when present), so the same call serves
``--workdirs`` and a whole sweep root. A figure without the runs or probes it needs
raises ``NoData`` saying what is missing. Panels are titled; axes carry units.
"""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.ticker  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from bnjax.plots.runs import Run, select  # noqa: E402

STANDARD_BN = ('none', 'batch')
FIVE = ('none', 'batch', 'lp1', 'lp2', 'lpinf')
VGG_LR, DLN_LR = 0.1, 1e-6
ICS_LRS = {'vgg': (0.1, 0.01), 'dln': (1e-6, 1e-7)}  # Fig. 3's rows
SMOOTH_STEPS = 50  # moving-average window of per-batch training curves (VGG)
COLUMN = 3.4  # inches: a figure panel stays readable at a column's width


class NoData(ValueError):
  """The runs given do not hold what a figure needs."""


def _need(runs: list[Run], what: str) -> list[Run]:
  if not runs:
    raise NoData(f'no runs for {what}')
  return runs


def _subplots(rows: int, cols: int, height: float = 2.6):
  # At least two columns wide, so that the figure's title fits.
  fig, axes = plt.subplots(rows, cols, figsize=(COLUMN * max(cols, 2), height * rows),
                           squeeze=False)
  return fig, axes


def _finish(fig, title: str):
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
  if window <= 1 or len(values) < window:
    return values
  kernel = np.ones(window) / window
  return np.convolve(values, kernel, mode='valid')


def _curve(ax, run: Run, key: str, scale: float = 1.0, smooth: int = 1, label=None, **kw):
  """One line of ``key`` over steps; a diverged run ends in an x at its last finite value."""
  steps, values = run.series(key)
  if not len(steps):
    return
  values = values * scale
  if smooth > 1 and len(values) >= smooth:
    values, steps = _smooth(values, smooth), steps[smooth - 1:]
  ax.plot(steps, values, color=kw.pop('color', run.color), lw=1.2,
          label=run.label() if label is None else label, **kw)
  if run.diverged:
    finite = np.isfinite(values)
    if finite.any():
      i = np.nonzero(finite)[0][-1]
      ax.plot(steps[i], values[i], 'x', color='k', markersize=8, mew=2)


def _training(ax, run: Run, label=None, **kw) -> None:
  """The training curve the paper shows: VGG accuracy (%), DLN loss (log)."""
  if run.family == 'vgg':
    _curve(ax, run, 'train_accuracy', 100, SMOOTH_STEPS, label=label, **kw)
    ax.set_ylabel(f'training accuracy (%)\n({SMOOTH_STEPS}-step mean)')
  else:
    _curve(ax, run, 'train_loss', label=label, **kw)
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
  ax.set_xlabel('training step')


def _band(ax, run: Run, key: str) -> None:
  steps, values = run.series(key)
  if values.ndim != 2:
    return
  with np.errstate(all='ignore'):
    values = np.where(np.isfinite(values), values, np.nan)
    lo, hi = np.nanmin(values, 1), np.nanmax(values, 1)
  ax.fill_between(steps, lo, hi, color=run.color, alpha=0.45, lw=0, label=run.label())


def _ridgeline(ax, run: Run, layer: int, rows: int = 8) -> None:
  """One unit's activation histograms at ``rows`` steps, stacked upwards (Figs. 1c, 2, 6, 9)."""
  key = f'probe/activations/layer{layer}/hist'
  steps, hist = run.series(key)
  _, edges = run.series(f'probe/activations/layer{layer}/edges')
  ax.set_title(f'{run.label()}\nlayer #{layer}', fontsize=8)
  ax.set_xlabel('activation value')
  if hist.ndim != 2:
    ax.text(0.5, 0.5, 'not probed', ha='center', transform=ax.transAxes)
    return
  ok = np.all(np.isfinite(edges), 1) & np.all(np.isfinite(hist), 1)
  picks = np.nonzero(ok)[0]
  picks = picks[np.unique(np.linspace(0, len(picks) - 1, min(rows, len(picks))).astype(int))]
  cmap = plt.get_cmap('viridis')
  for row, i in enumerate(picks):
    centres = 0.5 * (edges[i, 1:] + edges[i, :-1])
    density = hist[i] / max(hist[i].max(), 1)
    y0 = row * 0.7
    color = cmap(row / max(len(picks) - 1, 1))
    ax.fill_between(centres, y0, y0 + density, color=color, alpha=0.7, lw=0.5,
                    edgecolor='k', zorder=len(picks) - row)
  ax.set_yticks([row * 0.7 for row in range(len(picks))])
  ax.set_yticklabels([f'{int(steps[i])}' for i in picks], fontsize=7)
  ax.set_ylabel('training step')


def _layers_of(runs: list[Run], probe: str) -> list[int]:
  keys = {k for r in runs for l in r.lines[:50] for k in l if k.startswith(f'probe/{probe}/layer')}
  return sorted({int(k.split('/')[2][len('layer'):]) for k in keys})


def _probed_layers(run: Run) -> list[int]:
  return list(run.config['probes'].get('ics', {}).get('layers', ()))


# ------------------------------------------------------------------- paper figures
def fig1(runs):
  """VGG train and test accuracy, {standard, BN} x LR {0.1, 0.5}; layers #3, #11 (LR 0.1)."""
  chosen = [r for r in select(runs, 'vgg', STANDARD_BN) if np.isclose(r.lr, 0.1) or np.isclose(r.lr, 0.5)]
  chosen = _need(chosen or select(runs, 'vgg', STANDARD_BN), 'fig1 (VGG, standard and BN)')
  fig, axes = _subplots(2, 4)
  ax_train, ax_test = axes[0, 0], axes[0, 1]
  for r in chosen:
    style = '-' if np.isclose(r.lr, min(x.lr for x in chosen)) else '--'
    _training(ax_train, r, ls=style)
    _curve(ax_test, r, 'eval_accuracy', 100, ls=style, marker='o', markersize=2)
  ax_train.set_title('(a) training accuracy')
  ax_test.set_title('(b) test accuracy')
  ax_test.set(xlabel='training step', ylabel='test accuracy (%)')
  ax_train.legend(fontsize=7)
  for ax in axes[0, 2:]:
    ax.axis('off')
  base = select(chosen, 'vgg', STANDARD_BN, VGG_LR)
  panels = [(r, k) for k in (3, 11) for r in base][:4]
  for ax, (r, k) in zip(axes[1], panels):
    _ridgeline(ax, r, k)
  for ax in axes[1, len(panels):]:
    ax.axis('off')
  return _finish(fig, 'Fig. 1: VGG with and without BatchNorm (CIFAR-10 JPEG)')


def fig2(runs):
  """Standard, BN, noisy BN: training accuracy; ridgelines of layers #2, #9, #13."""
  chosen = _need(select(runs, 'vgg', ('none', 'batch', 'noisy_batch'), VGG_LR),
                 'fig2 (VGG standard, BN, noisy BN)')
  layers = [k for k in (2, 9, 13) if k in _layers_of(chosen, 'activations')] or \
      _layers_of(chosen, 'activations')[:3]
  fig, axes = _subplots(1 + len(chosen), max(3, len(layers)))
  _training(axes[0, 0], chosen[0])
  for r in chosen[1:]:
    _training(axes[0, 0], r)
  axes[0, 0].set_title('training accuracy')
  axes[0, 0].legend(fontsize=7)
  for ax in axes[0, 1:]:
    ax.axis('off')
  for row, r in enumerate(chosen, start=1):
    for col, k in enumerate(layers):
      _ridgeline(axes[row, col], r, k)
  return _finish(fig, 'Fig. 2: "noisy" BatchNorm trains like BatchNorm')


def fig3(runs):
  """ICS (Definition 2.1) of standard and BN networks: one row per model family and LR."""
  chosen = _need([r for r in runs if r.norm in STANDARD_BN and r.has('probe/ics/l2')],
                 'fig3 (standard and BN runs with the ics probe)')
  rows = sorted({(r.family, r.lr) for r in chosen}, key=lambda fl: (fl[0] != 'vgg', -fl[1]))
  paper_rows = [(f, lr) for f, lr in rows if any(np.isclose(lr, x) for x in ICS_LRS[f])]
  rows = paper_rows or rows
  width = max(len(_probed_layers(r)) for r in chosen)
  fig, axes = _subplots(len(rows), 1 + 2 * width)
  for row, (family, lr) in enumerate(rows):
    at = [r for r in chosen if r.family == family and np.isclose(r.lr, lr)]
    for r in at:
      _training(axes[row, 0], r)
    axes[row, 0].set_title(f'{family.upper()}, LR {lr:g}: training')
    axes[row, 0].legend(fontsize=6)
    layers = _probed_layers(at[0])
    for j, k in enumerate(layers):
      ax_l2, ax_cos = axes[row, 1 + j], axes[row, 1 + width + j]
      for r in at:
        for ax, key in ((ax_l2, 'probe/ics/l2'), (ax_cos, 'probe/ics/cosine')):
          steps, values = r.series(key)
          ax.plot(steps, values[:, j], color=r.color, lw=0.8, label=r.label(False))
      ax_l2.set(title=f"layer #{k}: $\\|G - G'\\|_2$", xlabel='training step',
                ylabel='l2 difference (ideal 0)', yscale='log')
      ax_cos.set(title=f"layer #{k}: cos$(G, G')$", xlabel='training step',
                 ylabel='cosine (ideal 1)')
      ax_cos.legend(fontsize=6)
  shift = chosen[0].config['probes']['ics'].get('shift', 'block')
  return _finish(fig, f'Fig. 3: internal covariate shift (W_<i moved as whole {shift}s)')


def _landscape_rows(runs, family, norms, lr, what):
  chosen = _need([r for r in select(runs, family, norms, lr) if r.has('probe/landscape/loss')],
                 what)
  return chosen


def _landscape_panels(axes, chosen):
  ax_loss, ax_grad, ax_beta = axes
  for r in chosen:
    _band(ax_loss, r, 'probe/landscape/loss')
    _band(ax_grad, r, 'probe/landscape/grad_diff')
    _curve(ax_beta, r, 'probe/landscape/beta')
  ax_loss.set(title='(a) loss landscape', xlabel='training step',
              ylabel=r'$L(\theta - \eta g)$, min-max over $\eta$', yscale='log')
  ax_grad.set(title='(b) gradient predictiveness', xlabel='training step',
              ylabel=r'$\|\nabla L(\theta - \eta g) - g\|_2$', yscale='log')
  ax_beta.set(title=r'(c) effective $\beta$-smoothness', xlabel='training step',
              ylabel=r'max$_\eta\,\|\nabla L(\theta-\eta g) - g\| / \|\eta g\|$', yscale='log')
  for r in chosen:
    if r.norm == 'batch':
      ax_beta.axhline(2 / r.lr, color=r.color, ls=':', lw=0.8, label=f'2/LR = {2 / r.lr:g}')
  ax_loss.legend(fontsize=7)
  ax_beta.legend(fontsize=7)


def fig4(runs):
  """VGG: loss band, gradient-predictiveness band, effective beta (standard vs BN)."""
  chosen = _landscape_rows(runs, 'vgg', STANDARD_BN, VGG_LR, 'fig4 (VGG landscape)')
  fig, axes = _subplots(1, 3)
  _landscape_panels(axes[0], chosen)
  return _finish(fig, 'Fig. 4: smoothness of the VGG loss landscape')


def fig10(runs):
  """DLN: loss band, gradient-predictiveness band, effective beta (standard vs BN)."""
  chosen = _landscape_rows(runs, 'dln', STANDARD_BN, DLN_LR, 'fig10 (DLN landscape)')
  fig, axes = _subplots(1, 3)
  _landscape_panels(axes[0], chosen)
  return _finish(fig, 'Fig. 10: smoothness of the deep linear network loss landscape')


def fig5(runs):
  """Standard, BN, l1, l2, linf: VGG training accuracy and DLN loss, as present."""
  panels = [(f, select(runs, f, FIVE, lr)) for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR))]
  panels = [(f, rs) for f, rs in panels if rs]
  if not panels:
    raise NoData('fig5 needs VGG or DLN runs of standard, BN, l1, l2, linf')
  fig, axes = _subplots(1, len(panels), height=3.2)
  for ax, (family, rs) in zip(axes[0], panels):
    for r in rs:
      _training(ax, r)
    ax.set_title(f'{family.upper()}: training {"accuracy" if family == "vgg" else "loss"}')
    ax.legend(fontsize=7)
  return _finish(fig, r'Fig. 5: $\ell_p$ normalisation against BatchNorm')


def fig6(runs):
  """Ridgelines of VGG layer #11 for the five normalisers."""
  chosen = _need(select(runs, 'vgg', FIVE, VGG_LR), 'fig6 (VGG, the five)')
  layers = _layers_of(chosen, 'activations')
  k = 11 if 11 in layers else (layers[-1] if layers else 11)
  fig, axes = _subplots(1, len(chosen), height=3.2)
  for ax, r in zip(axes[0], chosen):
    _ridgeline(ax, r, k)
  return _finish(fig, f'Fig. 6: activations of layer #{k} under each normaliser')


def fig8(runs):
  """One unit's batch mean and variance drift, layers #2, #9, #13 (both panels)."""
  chosen = _need(select(runs, 'vgg', ('none', 'batch', 'noisy_batch'), VGG_LR),
                 'fig8 (VGG standard, BN, noisy BN)')
  layers = [k for k in (2, 9, 13) if k in _layers_of(chosen, 'activations')] or \
      _layers_of(chosen, 'activations')[:3]
  fig, axes = _subplots(len(layers), 4)
  for row, k in enumerate(layers):
    for r in chosen:
      for col, stat in ((0, 'mean'), (1, 'var')):
        steps, v = r.series(f'probe/activations/layer{k}/{stat}')
        if not len(v):
          continue
        axes[row, col].plot(steps[1:], np.abs(np.diff(v)), color=r.color, lw=0.8,
                            label=r.label(False))
        axes[row, col + 2].plot(steps, v - v[0], color=r.color, lw=0.8, label=r.label(False))
    names = (r'$|\mu_{t+1} - \mu_t|$', r'$|\sigma^2_{t+1} - \sigma^2_t|$',
             r'$\mu_t - \mu_0$', r'$\sigma^2_t - \sigma^2_0$')
    for col, name in enumerate(names):
      axes[row, col].set(title=f'layer #{k}: {name}', xlabel='training step',
                         ylabel='change between probes' if col < 2 else 'change since step 0')
      if col < 2:
        axes[row, col].set_yscale('log')
  axes[0, 0].legend(fontsize=7)
  return _finish(fig, 'Fig. 8: distributional stability of one unit (a: step to step, b: since init)')


def fig9(runs):
  """DLN ridgelines, layers 1, 11, 24, for each normaliser."""
  chosen = _need(select(runs, 'dln', FIVE, DLN_LR), 'fig9 (DLN)')
  layers = [k for k in (1, 11, 24) if k in _layers_of(chosen, 'activations')]
  layers = layers or _layers_of(chosen, 'activations')[:3]
  fig, axes = _subplots(len(chosen), max(len(layers), 1))
  for row, r in enumerate(chosen):
    for col, k in enumerate(layers):
      _ridgeline(axes[row, col], r, k)
  return _finish(fig, 'Fig. 9: deep linear network activations')


def fig11(runs):
  """||grad L(theta - eta g) - g|| against eta, one line per probed step, coloured by step."""
  chosen = [r for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR))
            for r in select(runs, f, STANDARD_BN, lr) if r.has('probe/landscape/grad_diff')]
  chosen = _need(chosen, 'fig11 (standard and BN with the landscape probe)')
  fig, axes = _subplots(1, len(chosen), height=3.0)
  cmap = plt.get_cmap('viridis')
  for ax, r in zip(axes[0], chosen):
    steps, diffs = r.series('probe/landscape/grad_diff')
    _, etas = r.series('probe/landscape/step_sizes')
    picks = np.unique(np.linspace(0, len(steps) - 1, min(40, len(steps))).astype(int))
    for i in picks:
      ax.plot(etas[i], diffs[i], color=cmap(steps[i] / max(steps[-1], 1)), lw=0.8, marker='.',
              markersize=3)
    ax.set(title=r.label(), xlabel=r'step size $\eta$', xscale='log', yscale='log',
           ylabel=r'$\|\nabla L(\theta - \eta g) - g\|_2$')
    if len(etas):  # the probed step sizes as the ticks (few decades: log ticks overlap)
      ax.set_xticks(etas[0], [f'{e:g}' for e in etas[0]], fontsize=7)
      ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, steps[-1] if len(steps) else 1))
    fig.colorbar(sm, ax=ax, label='training step')
  return _finish(fig, 'Fig. 11: gradient predictiveness against step size')


def _five_landscapes(runs, family, lr, title):
  chosen = _landscape_rows(runs, family, FIVE, lr, f'{title} (the five normalisers)')
  fig, axes = _subplots(len(chosen), 3)
  for row, r in enumerate(chosen):
    _landscape_panels(axes[row], [r])
  return _finish(fig, title)


def fig12(runs):
  """VGG landscape panels for standard, BN, l1, l2, linf."""
  return _five_landscapes(runs, 'vgg', VGG_LR, r'Fig. 12: VGG landscapes of the $\ell_p$ normalisers')


def fig13(runs):
  """DLN landscape panels for standard, BN, l1, l2, linf."""
  return _five_landscapes(runs, 'dln', DLN_LR, r'Fig. 13: DLN landscapes of the $\ell_p$ normalisers')


# ---------------------------------------------------------------- beyond the paper
def _by_model_and_lr(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
  """{(family, lr): runs}, VGG first, larger learning rates first: one panel each."""
  keys = sorted({(r.family, r.lr) for r in runs}, key=lambda fl: (fl[0] != 'vgg', -fl[1]))
  return {(f, lr): [r for r in runs if r.family == f and np.isclose(r.lr, lr)] for f, lr in keys}


def sharpness(runs):
  """Top Hessian eigenvalue over training against 2/LR (edge of stability): standard and
  BN, BN's loss in train mode (solid) and eval mode (dashed); one panel per model and LR."""
  chosen = _need([r for r in runs if r.norm in STANDARD_BN
                  and r.has('probe/top_eigenvalues/eigenvalues')],
                 'sharpness (standard and BN runs with the top_eigenvalues probe)')
  panels = _by_model_and_lr(chosen)
  fig, axes = _subplots(1, len(panels), height=3.2)
  for ax, ((family, lr), at) in zip(axes[0], panels.items()):
    for r in at:
      for key, ls, mode in (('eigenvalues', '-', 'train'), ('eval_eigenvalues', '--', 'eval')):
        steps, lam = r.series(f'probe/top_eigenvalues/{key}')
        if lam.ndim == 2 and (r.norm != 'none' or mode == 'train'):
          ax.plot(steps, np.where(lam[:, 0] > 0, lam[:, 0], np.nan), ls=ls, color=r.color,
                  lw=1.2, label=f'{r.label(False)}' + (f', BN {mode} mode' if r.norm != 'none' else ''))
    ax.axhline(2 / lr, color='k', ls=':', lw=1, label=f'2/LR = {2 / lr:g}')
    ax.set(title=f'{family.upper()}, LR {lr:g}', xlabel='training step',
           ylabel=r'top Hessian eigenvalue $\lambda_{max}$', yscale='log')
    ax.legend(fontsize=6)
  return _finish(fig, 'Sharpness over training against 2/LR (Cohen et al. 2021)')


def density(runs):
  """The Hessian's spectral density (SLQ) at the first and last probed step."""
  chosen = [r for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR)) for r in select(runs, f, STANDARD_BN, lr)
            if r.has('probe/spectral_density/nodes')]
  chosen = _need(chosen, 'density (standard and BN runs with the spectral_density probe)')
  fig, axes = _subplots(1, len(chosen), height=3.0)
  for ax, r in zip(axes[0], chosen):
    steps, nodes = r.series('probe/spectral_density/nodes')
    _, weights = r.series('probe/spectral_density/weights')
    spread = np.nanmax(np.abs(nodes)) if np.isfinite(nodes).any() else 1.0
    grid = np.linspace(-spread * 1.05, spread * 1.05, 600)
    sigma = max(spread / 100, 1e-12)
    for i, style in ((0, '-'), (len(steps) - 1, '--')):
      z = (grid[:, None] - nodes[i].reshape(-1)[None]) / sigma
      d = np.sum(weights[i].reshape(-1) * np.exp(-0.5 * z**2), 1) / (sigma * np.sqrt(2 * np.pi))
      ax.plot(grid, np.maximum(d, 1e-12), ls=style, color=r.color, lw=1,
              label=f'step {int(steps[i])}')
    ax.set(title=f'{r.family.upper()}: {r.label()}', xlabel='eigenvalue', ylabel='density (log)', yscale='log',
           ylim=(1e-8, None))
    ax.legend(fontsize=7)
  return _finish(fig, 'Hessian eigenvalue density at the first and last step')


def theorems(runs):
  """Theorem 4.1's two sides (largest relative gap) and Theorem 4.2's slack, per BN layer."""
  chosen = [r for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR)) for r in select(runs, f, ('batch',), lr)
            if _layers_of([r], 'bn_theorems')]
  chosen = _need(chosen, 'theorems (BN runs with the bn_theorems probe)')
  fig, axes = _subplots(1, 2, height=3.0)
  for r in chosen:
    for j, k in enumerate(_layers_of([r], 'bn_theorems')):
      steps, lhs = r.series(f'probe/bn_theorems/layer{k}/grad_y_sq')
      _, rhs = r.series(f'probe/bn_theorems/layer{k}/thm41_rhs')
      gap = np.max(np.abs(lhs - rhs) / np.maximum(np.abs(lhs), 1e-30), 1)
      ls = ('-', '--', ':', '-.')[j % 4]
      color = 'C1' if r.family == 'vgg' else 'C3'
      label = f'{r.family.upper()}, LR {r.lr:g}, layer #{k}'
      axes[0, 0].plot(steps, gap, ls=ls, color=color, label=label)
      _, curv = r.series(f'probe/bn_theorems/layer{k}/curvature_y')
      _, bound = r.series(f'probe/bn_theorems/layer{k}/thm42_rhs')
      slack = np.median((bound - curv) / np.maximum(np.abs(bound), 1e-30), 1)
      axes[0, 1].plot(steps, slack, ls=ls, color=color, label=label)
  axes[0, 0].set(title='Thm 4.1 (equality): largest gap', xlabel='training step',
                 ylabel='max over units |lhs - rhs| / lhs', yscale='log')
  axes[0, 1].set(title='Thm 4.2: slack of the bound', xlabel='training step',
                 ylabel='median over units\n(bound - value) / |bound|')
  axes[0, 1].axhline(0, color='gray', lw=0.8)
  axes[0, 0].legend(fontsize=6)
  return _finish(fig, 'Theorems 4.1 and 4.2 measured during training')


def weights(runs):
  """Lemma 4.5: distance of the weights from their initialisation, raw (solid) and with
  each unit's scale removed (dashed); one panel per model and LR."""
  chosen = _need([r for r in runs if r.norm in STANDARD_BN + ('layer',)
                  and r.has('probe/weight_distance/raw')],
                 'weights (standard, BN or LayerNorm runs with the weight_distance probe)')
  panels = _by_model_and_lr(chosen)
  fig, axes = _subplots(1, len(panels), height=3.2)
  for ax, ((family, lr), at) in zip(axes[0], panels.items()):
    for r in at:
      _, n0 = r.series('probe/weight_distance/init_norm')
      for key, ls, what in (('raw', '-', ''), ('scale_free', '--', ', scale removed')):
        steps, d = r.series(f'probe/weight_distance/{key}')
        ax.plot(steps, np.sqrt(np.sum(d**2, 1) / np.sum(n0**2, 1)), ls=ls, color=r.color,
                label=r.label(False) + what)
    ax.set(title=f'{family.upper()}, LR {lr:g}', xlabel='training step',
           ylabel=r'$\|W_t - W_0\|_F / \|W_0\|_F$, all layers')
    ax.legend(fontsize=6)
  return _finish(fig, 'Lemma 4.5: how far training moves the weights from the initialisation')


def layernorm(runs):
  """LayerNorm beside standard and BN: training curve and the three landscape panels."""
  rows = []
  for family, lr in (('vgg', VGG_LR), ('dln', DLN_LR)):
    chosen = select(runs, family, ('none', 'batch', 'layer'), lr)
    if any(r.norm == 'layer' for r in chosen):
      rows.append(chosen)
  if not rows:
    raise NoData('layernorm needs runs with norm layer')
  fig, axes = _subplots(len(rows), 4)
  for row, chosen in enumerate(rows):
    for r in chosen:
      _training(axes[row, 0], r)
    axes[row, 0].set_title(f'{chosen[0].family.upper()}: training')
    _landscape_panels(axes[row, 1:], [r for r in chosen if r.has('probe/landscape/loss')])
  return _finish(fig, 'LayerNorm under the same probes')


PAPER = {'fig1': fig1, 'fig2': fig2, 'fig3': fig3, 'fig4': fig4, 'fig5': fig5, 'fig6': fig6,
         'fig8': fig8, 'fig9': fig9, 'fig10': fig10, 'fig11': fig11, 'fig12': fig12,
         'fig13': fig13}
BEYOND = {'sharpness': sharpness, 'density': density, 'theorems': theorems,
          'weights': weights, 'layernorm': layernorm}
FIGURES = {**PAPER, **BEYOND}
