"""Configs refused before any work: impossible values, bad probe settings."""

import pytest

from bnjax import config_lib, train
from small_runs import small_dln


@pytest.mark.parametrize('override,message', [
    ({'learning_rate': float('nan')}, 'learning_rate must be a finite number > 0'),
    ({'batch_size': 0}, 'batch_size must be an integer > 0'),
    ({'momentum': 1.0}, 'momentum must be in'),
    ({'dataset': 'cifar10'}, 'model dln needs dataset dln_gaussian'),
    ({'loss': 'cross_entropy'}, 'does not fit dataset'),
    ({'bn_stats': 'local'}, "unknown bn_stats 'local'"),
])
def test_impossible_configs_are_refused(tmp_path, override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(small_dln(**override), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('probes,message', [
    ({'landscape': {'every': 1, 'step_size_multipliers': (1.0, -2.0)}}, 'must be numbers > 0'),
    ({'landscape': {'every': 1, 'step_sizes': (1.0,)}}, "has no field\\(s\\) \\['step_sizes'\\]"),
    ({'hessian': {'every': 1}}, "unknown probe 'hessian'"),
    ({'ics': {'every': -5, 'layers': (1,)}}, 'every must be an integer >= 0'),
])
def test_bad_probe_settings_are_refused(tmp_path, probes, message):
  config = small_dln()
  config.probes = probes
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
