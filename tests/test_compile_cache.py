"""JAX's persistent compilation cache as bnjax.main uses it: where, how to change or turn it
off, and runs that differ only in their seed sharing the train chunk's program (compiled,
and traced: bnjax.program_cache)."""

import pathlib
import re

import jax
import numpy as np
import pytest

from bnjax import main as bnjax_main, program_cache
from small_runs import ROOT, main_args, metric_lines, start, subprocess_env


@pytest.fixture
def config_updates(monkeypatch):
  """The jax.config updates use_compilation_cache makes (recorded, not applied)."""
  updates = {}
  monkeypatch.setattr(jax.config, 'update', updates.__setitem__)
  for var in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'):
    monkeypatch.delenv(var, raising=False)
  return updates


def test_the_cache_is_under_the_bnjax_cache_dir_unless_the_config_or_jax_says_otherwise(
  config_updates, monkeypatch, tmp_path
):
  monkeypatch.setenv('BNJAX_CACHE', str(tmp_path))
  where = str(tmp_path / 'jax-compilation')
  assert bnjax_main.use_compilation_cache('auto') == where
  assert config_updates == {
    'jax_compilation_cache_dir': where,
    'jax_persistent_cache_min_compile_time_secs': 0.5,
  }
  config_updates.clear()
  monkeypatch.setenv('HOME', str(tmp_path))
  assert bnjax_main.use_compilation_cache('~/elsewhere') == str(tmp_path / 'elsewhere')
  config_updates.clear()
  assert bnjax_main.use_compilation_cache('off') is None and not config_updates
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/jax/says')  # JAX reads it itself
  assert bnjax_main.use_compilation_cache('auto') == '/jax/says' and not config_updates
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '')
  assert bnjax_main.use_compilation_cache('auto') is None and not config_updates


# The paper's DLN set, small: its weight_distance probe computes theta_0 from the seed
# inside the train program, so the seed must be an argument there, not a constant.
PAPER_DLN = f'{ROOT}/configs/sweeps/paper_dln.py:bn_lr1e-6_seed0'
WEIGHT_DISTANCE_ONLY = {
  'probes.top_eigenvalues.every': 0,
  'probes.spectral_density.steps': '()',
  'probes.weight_distance.every': 10,
  'probes.bn_theorems.layers': '(1,)',
}


@pytest.mark.slow
def test_a_second_seed_reads_the_train_programs_from_the_cache_of_the_first(tmp_path, monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('BNJAX_CACHE', str(tmp_path / 'cache'))
  cache = tmp_path / 'cache' / 'jax-compilation'
  logs = {}
  for seed in (0, 1):
    env = subprocess_env()
    # The tests' shared cache: not here. (subprocess_env also sets JAX's threshold to 0,
    # which wins over bnjax's: the tiny DLN compiles in less than bnjax's.)
    del env['JAX_COMPILATION_CACHE_DIR']
    args = main_args(tmp_path / f'seed{seed}', 20, PAPER_DLN, seed=seed, **WEIGHT_DISTANCE_ONLY)
    run = start(args, env=env)
    _, logs[seed] = run.communicate(timeout=300)
    assert run.returncode == 0, logs[seed][-3000:]
    assert f'persistent compilation cache: {cache}' in logs[seed]
  for program in ('jit_chunk', 'jit_init'):  # one program for both seeds
    assert len(list(cache.glob(f'{program}-*'))) == 1, sorted(cache.iterdir())
  # ... and one traced train program (bnjax.program_cache): seed 1 does not trace it.
  assert len(list((cache / program_cache.SUBDIR).glob('chunk-*'))) == 1
  assert 'tracing skipped' not in logs[0] and 'tracing skipped' in logs[1]
  hits = [
    int(re.search(r'(\d+) programs from the persistent cache', logs[s]).group(1)) for s in (0, 1)
  ]
  assert hits[0] == 0 and hits[1] >= 2
  probed = [l for l in metric_lines(tmp_path / 'seed1') if 'probe/weight_distance/raw' in l]
  assert [l['step'] for l in probed] == [0, 10]
  # theta_0 of seed 1 (seed 0's is as far from it as its own norm), recomputed in the
  # probe's program: XLA's optimised build rounds it unlike the initialiser's (8.9e-8 seen)
  step0 = probed[0]
  distance = np.asarray(step0['probe/weight_distance/raw'])
  assert distance.max() <= 1e-5 * np.asarray(step0['probe/weight_distance/init_norm']).min()


@pytest.mark.slow
def test_the_cache_turned_off_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.setenv('BNJAX_CACHE', str(tmp_path / 'cache'))
  env = subprocess_env()
  del env['JAX_COMPILATION_CACHE_DIR']
  run = start(main_args(tmp_path / 'run', num_steps=10, compilation_cache='off'), env=env)
  _, err = run.communicate(timeout=300)
  assert run.returncode == 0, err[-3000:]
  assert 'persistent compilation cache: off' in err
  assert not pathlib.Path(tmp_path / 'cache' / 'jax-compilation').exists()


@pytest.mark.slow
def test_runs_started_together_share_an_empty_cache(tmp_path, monkeypatch):
  """Two seeds at once compile the same programs into one empty directory: both train to
  the end (JAX writes entries in place; a reader that meets one half written compiles)."""
  monkeypatch.setenv('BNJAX_CACHE', str(tmp_path / 'cache'))
  env = subprocess_env()
  del env['JAX_COMPILATION_CACHE_DIR']
  runs = [
    start(main_args(tmp_path / f'seed{seed}', num_steps=20, seed=seed), env=env) for seed in (0, 1)
  ]
  for run in runs:
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
  assert len(list((tmp_path / 'cache' / 'jax-compilation').glob('jit_chunk-*'))) == 1
