"""The VGG train steps the VGG benchmarks time and profile, bnjax's and PyTorch's, built
in one place."""

import jax
import optax

from bnjax import models, objective, train
from bnjax.models import vgg


def vgg_train_step(name: str, batch_size: int, norm: str = 'batch', width: float = 1.0):
  """VGG ``name`` with normaliser ``norm`` (BatchNorm by default) at channel multiplier
  ``width``, Glorot init, plain SGD at LR 0.1, a random CIFAR-shaped batch. Returns
  (model, state, step, batch): ``step(state, batch) -> (state, metrics)``
  is jitted and donates the state; batch = {'inputs' [B, 32, 32, 3], 'targets' [B]}."""
  model = models.get_model(name, norm, width=width)
  x = jax.random.normal(jax.random.key(0), (batch_size, 32, 32, 3))
  y = jax.random.randint(jax.random.key(1), (batch_size,), 0, 10)
  tx = optax.sgd(0.1)
  state = train.TrainState.create(model.init(jax.random.key(2), x[:1], train=False), tx)
  train_step = train.make_train_step(objective.make_objective(model, 'cross_entropy'), tx, 0.1)
  base = jax.random.key(3)  # each step's noise key as bnjax.train draws it (noisy BN)
  step = jax.jit(
    lambda s, b: train_step(s, b, objective.noise_key_for_step(base, s.step)), donate_argnums=0
  )
  return model, state, step, {'inputs': x, 'targets': y}


def torch_vgg(layout, inplace_relu: bool = True):
  """VGG ``layout`` (``models.vgg.LAYOUTS``) in PyTorch for 32x32 inputs: per channel count
  a 3x3 conv (padding 1) + BatchNorm2d + ReLU, per 'M' a 2x2 max-pool, then one linear
  head sized from the pools; PyTorch's default init. A ``torch.nn.Sequential``."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  layers, c, hw = [], 3, 32
  for entry in layout:
    if entry == 'M':
      layers.append(nn.MaxPool2d(2))
      hw //= 2
    else:
      layers += [
        nn.Conv2d(c, entry, 3, padding=1),
        nn.BatchNorm2d(entry),
        nn.ReLU(inplace=inplace_relu),
      ]
      c = entry
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * hw * hw, 10))


def torch_vgg_train_step(name: str, batch_size: int):
  """The same VGG in PyTorch eager (``torch_vgg``; Glorot init, zero biases), train mode,
  SGD at LR 0.1, a random batch. Returns (step, forward): closures that run one train
  step / one no-grad forward pass; None without torch installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.manual_seed(0)
  net = torch_vgg(vgg.LAYOUTS[name])
  for m in net.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      nn.init.xavier_uniform_(m.weight)
      nn.init.zeros_(m.bias)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.1)
  x = torch.randn(batch_size, 3, 32, 32)
  y = torch.randint(0, 10, (batch_size,))

  def step():
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()

  def forward():
    with torch.no_grad():
      net(x)

  return step, forward
