"""Configs: the experiments load, validation refuses what cannot run, and the config
argument (``--config=FILE:local,FIELD=VALUE``) equals the explicit ``--config.FIELD=``."""

import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from bnjax import config_lib, experiments, scheduled_probes, train
from small_runs import small_dln, start, start_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').glob('*.py'))


def parse_command_line(*args: str):
  """The config ``bnjax.main`` gets from ``args``, parsed by ml_collections' own flag."""
  argv = ['prog', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, 'config file', flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_every_experiment_config_is_valid_at_paper_and_local_scale(path):
  for arg in ('', ':local'):
    config = parse_command_line(f'--config={path}{arg}')
    config_lib.validate(config, 1)
  assert config.num_steps < experiments.base().num_steps  # :local shrinks


@pytest.mark.parametrize(
  'path,arg,flags_',
  [
    ('vgg_noisy.py', 'local,num_steps=20', ['--config.num_steps=20']),
    (
      'vgg_bn.py',
      'local,learning_rate=1,dataset=imagefolder:/data/c.tar.gz,tensorboard=off',
      [
        '--config.learning_rate=1',
        '--config.dataset=imagefolder:/data/c.tar.gz',
        '--config.tensorboard=off',
      ],
    ),
    ('dln_bn.py', 'seed=3,model=dln,local', ['--config.seed=3', '--config.model=dln']),
  ],
)
def test_the_config_argument_equals_explicit_overrides(path, arg, flags_):
  """Words first, then fields, each typed like --config.FIELD= types it (1 -> 1.0 for a
  float field): the two configs are equal field by field and in their JSON."""
  words = [w for w in arg.split(',') if '=' not in w]
  short = parse_command_line(f'--config={ROOT / "configs" / path}:{arg}')
  long = parse_command_line(f'--config={ROOT / "configs" / path}:{",".join(words)}', *flags_)
  assert short.to_json() == long.to_json()
  assert short != parse_command_line(f'--config={ROOT / "configs" / path}:{",".join(words)}')


def test_the_config_argument_sets_typed_fields():
  c = experiments.vgg('batch', 'local,num_steps=20,learning_rate=1,eval_every=0')
  assert (c.model, c.num_steps, c.eval_every) == ('vgg11', 20, 0)  # local, then the fields
  assert c.learning_rate == 1.0 and isinstance(c.learning_rate, float)
  assert experiments.dln('none', '').to_json() == experiments.dln('none').to_json()


@pytest.mark.parametrize(
  'arg,message',
  [
    (
      'num_stpes=5',
      "config argument 'num_stpes=5': config has no field 'num_stpes'; closest: num_steps",
    ),
    ('local,learnin_rate=0.1', "config has no field 'learnin_rate'; closest: learning_rate"),
    (
      'num_steps=1e3',
      "config argument 'num_steps=1e3': config.num_steps must be an integer, got '1e3'",
    ),
    ('learning_rate=fast', 'config.learning_rate must be a number'),
    ('locl', 'unknown config argument \'locl\'; valid: "local", FIELD=VALUE'),
    ('probes.ics.every=5', 'only top-level fields are set here; use --config.probes.ics.every'),
    ('data=x', 'use --config.data.<field>='),
  ],
)
def test_a_bad_config_argument_is_one_line_naming_the_closest_field(arg, message):
  with pytest.raises(config_lib.ConfigError) as e:
    experiments.vgg('batch', arg)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_main_reports_a_bad_config_argument_in_one_line(tmp_path):
  p = subprocess.run(
    [
      sys.executable,
      '-m',
      'bnjax.main',
      f'--config={ROOT}/configs/dln_bn.py:local,num_stpes=5',
      f'--workdir={tmp_path}/w',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 2
  assert p.stderr.strip() == (
    "bnjax: config error: config argument 'num_stpes=5': "
    "config has no field 'num_stpes'; closest: num_steps, bn_stats"
  )
  assert not (tmp_path / 'w').exists()


SWEEP = """
from bnjax import experiments, sweep

def get_sweep():
  return experiments.dln('batch'), sweep.product(
      sweep.axis('norm', ['batch']), sweep.axis('learning_rate', [0.5]), sweep.axis('seed', [1]))

get_config = sweep.config_getter(get_sweep)
"""


def test_a_sweep_file_still_takes_a_run_name_with_equals_signs(tmp_path):
  """Sweep files' get_config takes a run name, not the experiments' argument."""
  f = tmp_path / 'sweep.py'
  f.write_text(SWEEP)
  config = parse_command_line(f'--config={f}:norm=batch_learning_rate=0.5_seed=1')
  assert (config.learning_rate, config.seed, config.num_steps) == (0.5, 1, 10_000)
  assert config_lib.load_config_file(f'{f}:norm=batch_learning_rate=0.5_seed=1').to_json() == (
    config.to_json()
  )


def test_the_experiments_keep_their_old_names_in_config_lib():
  """configs/sweeps/*.py and train.py call config_lib.vgg / dln / base."""
  assert config_lib.vgg is experiments.vgg and config_lib.dln is experiments.dln
  assert config_lib.base is experiments.base
  with pytest.raises(AttributeError):
    config_lib.no_such_thing  # pylint: disable=pointless-statement


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
  'probe,field,value,message',
  [
    ('ics', 'shift', 'layer', 'shift must be one of'),
    ('top_eigenvalues', 'bn_mode', 'running', 'bn_mode must be one of'),
    ('top_eigenvalues', 'steps', (1, -2), 'steps must be a tuple of step numbers'),
    ('landscape', 'step_size_multipliers', (1.0, -2.0), 'must be numbers > 0'),
    ('landscape', 'step_sizes', (1.0,), "has no field\\(s\\) \\['step_sizes'\\]"),
    ('ics', 'every', -5, 'every must be an integer >= 0'),
    ('ics', 'layers', (0, 2), 'layers must be layer numbers >= 1'),
  ],
)
def test_bad_probe_settings_are_refused(probe, field, value, message):
  config = experiments.dln('batch')
  config.probes.top_eigenvalues = {'every': 1, 'k': 1, 'num_iterations': 4, 'seed': 0}
  config.probes[probe][field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config, 1)


def test_an_unknown_probe_or_a_missing_field_is_refused():
  config = experiments.dln('batch')
  config.probes.hessian = {'every': 1}
  with pytest.raises(config_lib.ConfigError, match="unknown probe 'hessian'; valid: landscape, "):
    config_lib.validate(config, 1)
  config = experiments.dln('batch')
  config.probes.top_eigenvalues = {'every': 0, 'k': 1, 'seed': 0}
  with pytest.raises(
    config_lib.ConfigError, match=r"probe 'top_eigenvalues' needs field\(s\) \['num_iterations'\]"
  ):
    config_lib.validate(config, 1)


def test_every_probe_declares_its_fields_and_defaults_once():
  """What config_lib checks is what the registry declares: each probe's own fields plus
  every and steps; a field with a default may be left out."""
  assert list(scheduled_probes.PROBES) == [
    'landscape',
    'ics',
    'activations',
    'top_eigenvalues',
    'hessian_trace',
    'spectral_density',
    'bn_theorems',
    'weight_distance',
  ]
  for entry in scheduled_probes.PROBES.values():
    assert {'every', 'steps'} <= set(entry.fields)
  assert scheduled_probes.PROBES['ics'].fields['shift'].default == 'block'
  config = experiments.dln('batch')
  config.probes.top_eigenvalues = {'every': 1, 'k': 1, 'num_iterations': 4, 'seed': 0}
  config_lib.validate(config, 1)  # bn_mode and steps take their defaults


def test_differing_fields_are_dotted():
  a = experiments.dln('batch').to_dict()
  b = experiments.dln('none', 'local').to_dict()
  assert config_lib.differing_fields(a, b) == ['checkpoint_every', 'norm', 'num_steps']


@pytest.mark.parametrize(
  'override,message',
  [
    ({'learning_rate': float('nan')}, 'learning_rate must be a finite number > 0'),
    ({'batch_size': 0}, 'batch_size must be an integer > 0'),
    ({'momentum': 1.0}, 'momentum must be in'),
    ({'dataset': 'cifar10'}, 'model dln needs dataset dln_gaussian'),
    ({'loss': 'cross_entropy'}, 'does not fit dataset'),
    ({'bn_stats': 'local'}, "unknown bn_stats 'local'"),
  ],
)
def test_impossible_configs_are_refused(tmp_path, override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(small_dln(**override), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize(
  'flag,message',
  [
    ('--config.no_such_field=1', "bnjax: config has no field 'no_such_field'; valid: batch_size, "),
    (
      '--config.probes.landscape.evry=5',
      "bnjax: config has no field 'probes.landscape.evry'; closest: probes.landscape.every",
    ),
    (
      '--config.learnin_rate=0.1',
      "bnjax: config has no field 'learnin_rate'; closest: learning_rate",
    ),
  ],
)
def test_a_misspelt_override_is_one_line_with_the_closest_names(tmp_path, flag, message):
  p = start(
    [
      sys.executable,
      '-m',
      'bnjax.main',
      f'--config={ROOT}/configs/dln_bn.py',
      f'--workdir={tmp_path / "w"}',
      flag,
    ]
  )
  _, err = p.communicate(timeout=120)
  assert p.returncode == 2
  assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / 'w').exists()


def test_main_reports_a_bad_value_in_one_line(tmp_path):
  p = start_main([f'--config={ROOT}/configs/dln_bn.py', '--config.norm=bogus'], tmp_path / 'w')
  _, err = p.communicate(timeout=120)
  assert p.returncode == 2 and err.strip().splitlines()[-1].startswith(
    "bnjax: config error: unknown normaliser 'bogus'"
  )
  assert not (tmp_path / 'w').exists()


def test_a_seed_the_train_program_cannot_take_is_refused_in_one_line():
  config = experiments.dln('batch')
  config.seed = 2**31 - 1
  config_lib.validate(config, 1)
  config.seed = 2**31  # the train program takes the seed as an int32 argument
  with pytest.raises(config_lib.ConfigError, match=r'^config.seed must be below 2\*\*31, got'):
    config_lib.validate(config, 1)
