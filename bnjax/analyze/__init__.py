r"""Probes on a run's saved checkpoints, after (or beside) its training.

  python -m bnjax.analyze WORKDIR|SWEEP_ROOT [...] --probe=NAME [--steps=all|0,5000,last]
      [--batches=N] [--data-seed=S] [--bn-mode=train|eval] [--seed=K] [--noise-seed=K]
      [--arg KEY=VALUE ...] [--KEY=VALUE ...] [--name=NAME]
      [--directions=SPEC[,SPEC] --grid=LO:HI:N [--grid2=LO:HI:M]]   (loss_surface)

For every workdir given (or found below a sweep root: each with checkpoints/), the probe
runs at step 0 (the initialisation, rebuilt from config.seed as the trainer builds it)
and at every committed checkpoint, or at the steps listed. It sees one loss: the run's
loss averaged over N training batches of the run's batch size (batches 0..N-1 of the
order ``--data-seed``, default the run's seed, shuffles them; ``probes.dataset_loss``),
BatchNorm in training mode (batch statistics; noisy-BN noise from ``--noise-seed``'s
keys) or eval mode (running averages, no noise). NAME is a probe of
``bnjax.analyze.table`` (top_eigenvalues, hessian_trace, hessian_trace_hutchpp,
hessian_diagonal, spectral_density, adaptive_sharpness, epsilon_sharpness,
gradient_landscape, loss_surface); its keyword arguments come from ``--arg KEY=VALUE``
or ``--KEY=VALUE`` (e.g. ``--k=3 --tol=1e-3``, ``--rho=0.05 --kind=average``), each read
as the type the probe declares. loss_surface's directions and grid: see
``bnjax.analyze.surface_args``. ``--operator=ef`` (any run) or ``fisher`` /
``fisher_exact`` (cross-entropy runs) on the spectral probes see the same examples as a
``probes.PerExampleLoss`` (``states.per_example_loss``): e.g. tr(F) beside tr(H).

Writes ``WORKDIR/analysis/NAME.jsonl`` (NAME: ``--name``, default the probe's name), one
line per step: {"step", the probe's fields as JSON numbers and lists, "seconds",
"settings"}, and ``WORKDIR/analysis/NAME.png`` (``bnjax.plots.analysis``).

Resumable: steps already in the jsonl with the same settings are skipped (a second run
computes and writes nothing). A jsonl holding other settings (another probe argument,
BN mode, batches, seeds, directions or grid) is refused with the settings that differ:
give ``--name`` for a file of their own. Safe beside a running training: it reads only
committed checkpoints (orbax's commit marker), never takes the workdir's lock, and
writes only under ``analysis/``, each file whole and atomically. A checkpoint deleted
meanwhile (``max_checkpoints_to_keep``) is reported and left out.

Exit status: 0 when every requested step is in the jsonl, 1 when some workdir could not
be completed (each said why on stderr), 2 for a bad request (one line: unknown probe,
argument or value).
"""
