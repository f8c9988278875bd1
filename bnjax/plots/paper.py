"""The paper's figures (Figs. 1-6, 8-13), each a function of groups of runs -> Figure.

Every function takes all candidate groups (one configuration at its seeds) and picks the
ones its figure shows (model family, normalisers, learning rates), so the same call
serves ``--workdirs`` and a whole sweep root. Curves are the mean over seeds with a
min-max band; activation histograms show the first seed (each seed draws its own unit).
Figures 3, 4, 10 and 11 draw every learning rate of the paper's sets that was run.
"""

import warnings

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from bnjax.plots import panels
from bnjax.plots.panels import NoData, need
from bnjax.plots.runs import Group, select

STANDARD_BN = ('none', 'batch')
FIVE = ('none', 'batch', 'lp1', 'lp2', 'lpinf')
VGG_LR, DLN_LR = 0.1, 1e-6
SET_LRS = {'vgg': (0.5, 0.1, 0.01), 'dln': (1e-6, 1e-7)}  # the learning rates of the sets


def _rates(groups: list[Group], family: str) -> list[float]:
  """The set's learning rates that groups of ``family`` have (largest first), else all theirs."""
  have = sorted({g.lr for g in groups if g.family == family}, reverse=True)
  paper = [lr for lr in have if any(np.isclose(lr, x) for x in SET_LRS[family])]
  return paper or have


def _at(groups: list[Group], family: str, lr: float) -> list[Group]:
  return [g for g in groups if g.family == family and np.isclose(g.lr, lr)]


def _ridgelines(axes_groups_layers) -> None:
  """Ridgelines; panels of one layer share their x range."""
  by_layer: dict[int, list] = {}
  for ax, group, layer in axes_groups_layers:
    by_layer.setdefault(layer, []).append((ax, panels.ridgeline(ax, group, layer)))
  for shown in by_layer.values():
    panels.share_x(shown)


def _off(axes) -> None:
  for ax in axes:
    ax.axis('off')


def fig1(groups):
  """VGG train and test accuracy, {standard, BN} x LR {0.1, 0.5}; layers #3, #11 (LR 0.1)."""
  chosen = [
    g for g in select(groups, 'vgg', STANDARD_BN) if np.isclose(g.lr, 0.1) or np.isclose(g.lr, 0.5)
  ]
  chosen = need(chosen or select(groups, 'vgg', STANDARD_BN), 'fig1 (VGG, standard and BN)')
  fig, axes = panels.subplots(2, 4)
  ax_train, ax_test = axes[0, 0], axes[0, 1]
  for g in chosen:
    style = '-' if np.isclose(g.lr, min(x.lr for x in chosen)) else '--'
    panels.training(ax_train, g, ls=style)
    panels.seed_curve(ax_test, g, 'eval_accuracy', 100, ls=style, marker='o', markersize=2)
  ax_train.set_title('(a) training accuracy')
  ax_test.set_title('(b) test accuracy')
  ax_test.set(xlabel='training step', ylabel='test accuracy (%)')
  panels.legend_below(ax_train)
  _off(axes[0, 2:])
  base = select(chosen, 'vgg', STANDARD_BN, VGG_LR)
  shown = [(g, k) for k in (3, 11) for g in base][:4]
  _ridgelines([(ax, g, k) for ax, (g, k) in zip(axes[1], shown)])
  _off(axes[1, len(shown) :])
  return panels.finish(fig, 'Fig. 1: VGG with and without BatchNorm (CIFAR-10 JPEG)')


def fig2(groups):
  """Standard, BN, noisy BN (and the noise alone): training and test accuracy (noisy runs
  also with the noise at its expectation); ridgelines of layers #2, #9, #13."""
  chosen = need(
    select(groups, 'vgg', ('none', 'batch', 'noisy_batch', 'noise'), VGG_LR),
    'fig2 (VGG standard, BN, noisy BN)',
  )
  shown = [g for g in chosen if g.norm != 'noise']
  layers = [
    k for k in (2, 9, 13) if k in panels.layers_of(shown, 'activations')
  ] or panels.layers_of(shown, 'activations')[:3]
  fig, axes = panels.subplots(1 + len(shown), max(3, len(layers)))
  for g in chosen:
    panels.training(axes[0, 0], g)
    panels.seed_curve(axes[0, 1], g, 'eval_accuracy', 100, marker='o', markersize=2)
    if g.has('eval_accuracy_expected_noise'):
      panels.seed_curve(
        axes[0, 1],
        g,
        'eval_accuracy_expected_noise',
        100,
        ls='--',
        marker='s',
        markersize=2,
        label=f'{g.label(False)}, noise at its expectation',
      )
  axes[0, 0].set_title('(a) training accuracy')
  axes[0, 1].set(title='(b) test accuracy', xlabel='training step', ylabel='test accuracy (%)')
  panels.legend_below(axes[0, 0], ncol=1)
  panels.legend_below(axes[0, 1], ncol=1)
  _off(axes[0, 2:])
  _ridgelines(
    [(axes[row, col], g, k) for row, g in enumerate(shown, start=1) for col, k in enumerate(layers)]
  )
  return panels.finish(fig, 'Fig. 2: "noisy" BatchNorm against BatchNorm (and the noise alone)')


def fig3(groups):
  """ICS (Definition 2.1) of standard and BN networks: one row per model family and LR."""
  chosen = need(
    [g for g in groups if g.norm in STANDARD_BN and g.has('probe/ics/l2')],
    'fig3 (standard and BN runs with the ics probe)',
  )
  rows = [(f, lr) for f in ('vgg', 'dln') for lr in _rates(chosen, f)]
  width = max(len(panels.probed_layers(g)) for g in chosen)
  fig, axes = panels.subplots(len(rows), 1 + 2 * width)
  for row, (family, lr) in enumerate(rows):
    at = _at(chosen, family, lr)
    for g in at:
      panels.training(axes[row, 0], g)
    axes[row, 0].set_title(f'{family.upper()}, LR {lr:g}: training')
    axes[row, 0].legend(fontsize=5)
    for j, k in enumerate(panels.probed_layers(at[0])):
      ax_l2, ax_cos = axes[row, 1 + j], axes[row, 1 + width + j]
      for g in at:
        panels.seed_curve(ax_l2, g, 'probe/ics/l2', column=j, label=g.label(False))
        panels.seed_curve(ax_cos, g, 'probe/ics/cosine', column=j, label=g.label(False))
      ax_l2.set(
        title=f"LR {lr:g}, layer #{k}: $\\|G - G'\\|_2$",
        xlabel='training step',
        ylabel='l2 difference (ideal 0)',
        yscale='log',
      )
      ax_cos.set(
        title=f"LR {lr:g}, layer #{k}: cos$(G, G')$",
        xlabel='training step',
        ylabel='cosine (ideal 1)',
      )
  shift = chosen[0].config['probes']['ics'].get('shift', 'block')
  return panels.finish(fig, f'Fig. 3: internal covariate shift (W_<i moved as whole {shift}s)')


def landscape_panels(axes, chosen: list[Group]) -> None:
  """(a) loss band, (b) gradient-predictiveness band, (c) effective beta, with 2/LR."""
  ax_loss, ax_grad, ax_beta = axes
  for g in chosen:
    panels.band(ax_loss, g, 'probe/landscape/loss')
    panels.band(ax_grad, g, 'probe/landscape/grad_diff', label=False)
    panels.seed_curve(ax_beta, g, 'probe/landscape/beta', label=g.label(False))
  lr = chosen[0].lr if chosen else 1.0
  ax_loss.set(
    title=f'(a) loss landscape, LR {lr:g}',
    xlabel='training step',
    ylabel=r'$L(\theta - \eta g)$, min-max over $\eta$',
    yscale='log',
  )
  ax_grad.set(
    title=f'(b) gradient predictiveness, LR {lr:g}',
    xlabel='training step',
    ylabel=r'$\|\nabla L(\theta - \eta g) - g\|_2$',
    yscale='log',
  )
  ax_beta.set(
    title=rf'(c) effective $\beta$-smoothness, LR {lr:g}',
    xlabel='training step',
    ylabel=r'max$_\eta\,\|\nabla L(\theta-\eta g) - g\| / \|\eta g\|$',
    yscale='log',
  )
  ax_beta.axhline(2 / lr, color='k', ls=':', lw=0.8, label=f'2/LR = {2 / lr:g}')
  ax_loss.legend(fontsize=6)
  ax_beta.legend(fontsize=6)


def _landscape_by_lr(groups, family, norms, what, title):
  chosen = need([g for g in select(groups, family, norms) if g.has('probe/landscape/loss')], what)
  rates = _rates(chosen, family)
  fig, axes = panels.subplots(len(rates), 3)
  for row, lr in enumerate(rates):
    landscape_panels(axes[row], _at(chosen, family, lr))
  return panels.finish(fig, title)


def fig4(groups):
  """VGG: loss band, gradient-predictiveness band, effective beta (standard vs BN), every LR."""
  return _landscape_by_lr(
    groups,
    'vgg',
    STANDARD_BN,
    'fig4 (VGG landscape)',
    'Fig. 4: smoothness of the VGG loss landscape, every learning rate',
  )


def fig10(groups):
  """DLN: loss band, gradient-predictiveness band, effective beta (standard vs BN), every LR."""
  return _landscape_by_lr(
    groups,
    'dln',
    STANDARD_BN,
    'fig10 (DLN landscape)',
    'Fig. 10: smoothness of the deep linear network landscape, every LR',
  )


def fig5(groups):
  """Standard, BN, l1, l2, linf: VGG training accuracy and DLN loss (log steps), as present."""
  shown = [(f, select(groups, f, FIVE, lr)) for f, lr in (('vgg', VGG_LR), ('dln', DLN_LR))]
  shown = [(f, gs) for f, gs in shown if gs]
  if not shown:
    raise NoData('fig5 needs VGG or DLN runs of standard, BN, l1, l2, linf')
  fig, axes = panels.subplots(1, len(shown), height=3.4)
  for ax, (family, gs) in zip(axes[0], shown):
    for g in gs:
      panels.training(ax, g)
    ax.set_title(f'{family.upper()}: training {"accuracy" if family == "vgg" else "loss"}')
    if family == 'dln':  # the normalisers separate in the first thousand steps
      ax.set_xscale('symlog', linthresh=10)
      ax.set_xlabel('training step (log beyond 10)')
    panels.legend_below(ax, ncol=1)
  return panels.finish(fig, r'Fig. 5: $\ell_p$ normalisation against BatchNorm')


def fig6(groups):
  """Ridgelines of VGG layer #11 for the five normalisers, on one x range."""
  chosen = need(select(groups, 'vgg', FIVE, VGG_LR), 'fig6 (VGG, the five)')
  layers = panels.layers_of(chosen, 'activations')
  k = 11 if 11 in layers else (layers[-1] if layers else 11)
  fig, axes = panels.subplots(1, len(chosen), height=3.2)
  _ridgelines([(ax, g, k) for ax, g in zip(axes[0], chosen)])
  return panels.finish(fig, f'Fig. 6: activations of layer #{k} under each normaliser')


def fig8(groups):
  """One unit's batch mean and variance drift, layers #2, #9, #13; one thin line per seed
  (each seed's own random unit)."""
  chosen = need(
    select(groups, 'vgg', ('none', 'batch', 'noisy_batch'), VGG_LR),
    'fig8 (VGG standard, BN, noisy BN)',
  )
  layers = [
    k for k in (2, 9, 13) if k in panels.layers_of(chosen, 'activations')
  ] or panels.layers_of(chosen, 'activations')[:3]
  fig, axes = panels.subplots(len(layers), 4)
  for row, k in enumerate(layers):
    for g in chosen:
      for i, r in enumerate(g.runs):
        for col, stat in ((0, 'mean'), (1, 'var')):
          steps, v = r.series(f'probe/activations/layer{k}/{stat}')
          if not len(v):
            continue
          label = g.label(False) if i == 0 else None
          axes[row, col].plot(
            steps[1:], np.abs(np.diff(v)), color=g.color, lw=0.7, alpha=0.8, label=label
          )
          axes[row, col + 2].plot(steps, v - v[0], color=g.color, lw=0.7, alpha=0.8, label=label)
    names = (
      r'$|\mu_{t+1} - \mu_t|$',
      r'$|\sigma^2_{t+1} - \sigma^2_t|$',
      r'$\mu_t - \mu_0$',
      r'$\sigma^2_t - \sigma^2_0$',
    )
    for col, name in enumerate(names):
      axes[row, col].set(
        title=f'layer #{k}: {name}',
        xlabel='training step',
        ylabel='change between probes' if col < 2 else 'change since step 0',
      )
      if col < 2:
        axes[row, col].set_yscale('log')
  axes[0, 0].legend(fontsize=6)
  return panels.finish(
    fig,
    'Fig. 8: distributional stability of one unit '
    '(a: step to step, b: since init; a line per seed)',
  )


def fig9(groups):
  """DLN ridgelines, layers 1, 11, 24, for each normaliser; a layer's panels share x."""
  chosen = need(select(groups, 'dln', FIVE, DLN_LR), 'fig9 (DLN)')
  layers = [k for k in (1, 11, 24) if k in panels.layers_of(chosen, 'activations')]
  layers = layers or panels.layers_of(chosen, 'activations')[:3]
  fig, axes = panels.subplots(len(chosen), max(len(layers), 1))
  _ridgelines(
    [(axes[row, col], g, k) for row, g in enumerate(chosen) for col, k in enumerate(layers)]
  )
  return panels.finish(fig, 'Fig. 9: deep linear network activations')


def fig11(groups):
  """||grad L(theta - eta g) - g|| against eta (mean over seeds), one line per probed step,
  coloured by step: standard and BN at every learning rate."""
  chosen = [
    g
    for f in ('vgg', 'dln')
    for lr in _rates(groups, f)
    for g in select(_at(groups, f, lr), f, STANDARD_BN)
    if g.has('probe/landscape/grad_diff')
  ]
  chosen = need(chosen, 'fig11 (standard and BN with the landscape probe)')
  cols = min(len(chosen), 4)
  rows = -(-len(chosen) // cols)
  fig, axes = panels.subplots(rows, cols, height=3.0)
  cmap = plt.get_cmap('viridis')
  for ax, g in zip(axes.flat, chosen):
    steps, diffs = g.stack('probe/landscape/grad_diff')
    _, etas = g.first.series('probe/landscape/step_sizes')
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)
      diffs = np.nanmean(diffs, 0)
    picks = np.unique(np.linspace(0, len(steps) - 1, min(40, len(steps))).astype(int))
    for i in picks:
      ax.plot(
        etas[0],
        diffs[i],
        color=cmap(steps[i] / max(steps[-1], 1)),
        lw=0.8,
        marker='.',
        markersize=3,
      )
    ax.set(
      title=g.label(),
      xlabel=r'step size $\eta$',
      xscale='log',
      yscale='log',
      ylabel=r'$\|\nabla L(\theta - \eta g) - g\|_2$',
    )
    ax.title.set_fontsize(7)
    if len(etas):  # the probed step sizes as the ticks, slanted so that none overlap
      ax.set_xticks(etas[0], [f'{e:g}' for e in etas[0]], fontsize=6, rotation=40)
      ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, steps[-1] if len(steps) else 1))
    fig.colorbar(sm, ax=ax, label='training step')
  for ax in list(axes.flat)[len(chosen) :]:
    ax.axis('off')
  return panels.finish(fig, 'Fig. 11: gradient predictiveness against step size (mean over seeds)')


def _five_landscapes(groups, family, lr, title):
  chosen = need(
    [g for g in select(groups, family, FIVE, lr) if g.has('probe/landscape/loss')],
    f'{title} (the five normalisers)',
  )
  fig, axes = panels.subplots(len(chosen), 3, sharey='col')  # rows comparable at a glance
  for row, g in enumerate(chosen):
    landscape_panels(axes[row], [g])
  return panels.finish(fig, title)


def fig12(groups):
  """VGG landscape panels for standard, BN, l1, l2, linf (one y scale per column)."""
  return _five_landscapes(
    groups, 'vgg', VGG_LR, r'Fig. 12: VGG landscapes of the $\ell_p$ normalisers'
  )


def fig13(groups):
  """DLN landscape panels for standard, BN, l1, l2, linf (one y scale per column)."""
  return _five_landscapes(
    groups, 'dln', DLN_LR, r'Fig. 13: DLN landscapes of the $\ell_p$ normalisers'
  )


PAPER = {
  'fig1': fig1,
  'fig2': fig2,
  'fig3': fig3,
  'fig4': fig4,
  'fig5': fig5,
  'fig6': fig6,
  'fig8': fig8,
  'fig9': fig9,
  'fig10': fig10,
  'fig11': fig11,
  'fig12': fig12,
  'fig13': fig13,
}
