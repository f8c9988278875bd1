"""The test-split evaluation: every example once (the last batch padded), over a mesh."""

import functools
import types

import jax
import ml_collections
import numpy as np
import optax
import pytest

from bnjax import data, evaluation, models, train


def _direct(model, variables, split):
  """Mean loss and accuracy over the whole split in one unsharded call."""
  logits = model.apply(variables, split.inputs, train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, split.targets).mean()
  return float(loss), float((np.argmax(logits, -1) == split.targets).mean())


@pytest.mark.parametrize('norm', ['batch', 'noisy_batch'])
def test_loss_and_accuracy_over_every_test_example_once(norm):
  config = ml_collections.ConfigDict({'norm': norm, 'loss': 'cross_entropy', 'eval_batch_size': 16})
  model = models.get_model('mlp', norm, num_classes=3, hidden=(8,))
  rng = np.random.default_rng(0)
  test = data.Split(
    rng.standard_normal((37, 5)).astype(np.float32),  # 3 batches, 1 padded
    rng.integers(0, 3, 37).astype(np.int32),
  )
  variables = model.init(
    {'params': jax.random.key(0), 'noise': jax.random.key(1)}, test.inputs[:1], train=False
  )
  state = types.SimpleNamespace(params=variables['params'], batch_stats=variables['batch_stats'])
  mesh = train.data_mesh()  # the run's mesh: every device
  out = evaluation.make_evaluate(config, model, test, mesh)(state)
  loss, accuracy = _direct(model, variables, test)
  assert out['eval_loss'] == pytest.approx(loss, rel=1e-5)
  assert out['eval_accuracy'] == pytest.approx(accuracy)
  if norm == 'noisy_batch':
    expected = model.clone(norm=functools.partial(model.norm, eval_noise='expectation'))
    loss, accuracy = _direct(expected, variables, test)
    assert out['eval_loss_expected_noise'] == pytest.approx(loss, rel=1e-5)
    assert out['eval_accuracy_expected_noise'] == pytest.approx(accuracy)
  else:
    assert set(out) == {'eval_loss', 'eval_accuracy'}
  assert evaluation.make_evaluate(config, model, None, mesh)(state) == {}
