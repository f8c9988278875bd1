"""The VGG train step the VGG benchmarks time and profile, built in one place."""

import jax
import optax

from bnjax import models, objective, train


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
  step = jax.jit(train.make_train_step(objective.make_objective(model, 'cross_entropy'), tx,
                                       jax.random.key(3), 0.1), donate_argnums=0)
  return model, state, step, {'inputs': x, 'targets': y}
