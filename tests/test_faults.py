"""A misspelt ``--config.<field>`` override: one line naming the closest fields."""

import sys

import pytest

from small_runs import ROOT, start


@pytest.mark.parametrize('flag,message', [
    ('--config.no_such_field=1', "bnjax: config has no field 'no_such_field'; valid: batch_size, "),
    ('--config.probes.landscape.evry=5',
     "bnjax: config has no field 'probes.landscape.evry'; closest: probes.landscape.every"),
    ('--config.learnin_rate=0.1', "bnjax: config has no field 'learnin_rate'; closest: learning_rate"),
])
def test_a_misspelt_override_is_one_line_with_the_closest_names(tmp_path, flag, message):
  p = start([sys.executable, '-m', 'bnjax.main', f'--config={ROOT}/configs/dln_bn.py',
             f'--workdir={tmp_path / "w"}', flag])
  _, err = p.communicate(timeout=120)
  assert p.returncode == 2
  assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / 'w').exists()
