"""The paper's experiments as ml_collections configs: ``vgg`` and ``dln``, both on ``base``.

``configs/*.py`` are one-line wrappers around ``vgg`` and ``dln``, so that every config
has the same top-level fields and ``--config.<field>=<value>`` reads the same everywhere:

  model, norm, dataset, learning_rate, batch_size, num_steps, seed, eval_every,
  checkpoint_every, probes

plus grouped sub-configs (``norm_kwargs``, ``model_kwargs``, ``data``) and a few trainer
settings. The argument after the config file's ':' (``--config=configs/vgg_bn.py:ARG``)
reaches ``vgg`` / ``dln`` as ``arg``: ``local`` shrinks the experiment to run on a laptop
in about a minute, and ``FIELD=VALUE`` pairs set top-level fields, e.g.
``configs/vgg_bn.py:local,num_steps=100`` (see ``config_lib.apply_arg``).
"""

import ml_collections

from bnjax import config_lib


def base() -> ml_collections.ConfigDict:
  """Every field a config has, at its default (the experiments below change some)."""
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
  c.status_every_seconds = 60.0  # status.json's step rewritten at least this often
  # JAX's persistent compilation cache (bnjax.main): 'auto' ($BNJAX_CACHE or
  # ~/.cache/bnjax, /jax-compilation), a directory, or 'off'; JAX_COMPILATION_CACHE_DIR wins.
  c.compilation_cache = 'auto'
  c.probes = ml_collections.ConfigDict()
  return c


def vgg(norm: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """VGG-16 on CIFAR-10, batch 128, plain SGD at LR 0.1, 15,000 steps (PAPER.md)."""
  c = base()
  c.model = 'vgg16'
  c.norm = norm
  c.model_kwargs.width = 1.0
  c.probes.landscape = ml_collections.ConfigDict(
    {'every': 100, 'step_size_multipliers': (0.5, 1.0, 2.0, 4.0)}
  )
  c.probes.ics = ml_collections.ConfigDict({'every': 100, 'layers': (5, 10)})
  c.probes.activations = ml_collections.ConfigDict(
    {'every': 100, 'layers': (2, 3, 9, 11, 13), 'seed': 0}
  )

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

  return config_lib.apply_arg(c, arg, local=shrink)


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
    {'every': 100, 'step_size_multipliers': (0.01, 0.1, 1.0, 10.0, 30.0)}
  )
  c.probes.ics = ml_collections.ConfigDict({'every': 100, 'layers': (9, 17)})
  c.probes.activations = ml_collections.ConfigDict({'every': 100, 'layers': (1, 11, 24), 'seed': 0})

  def shrink(c):
    c.num_steps = 1000
    c.checkpoint_every = 500

  return config_lib.apply_arg(c, arg, local=shrink)
