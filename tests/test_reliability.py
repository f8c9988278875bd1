"""Runs that survive faults and bad input: divergence, damaged checkpoints, config clashes."""

import json
import logging
import pathlib
import threading

import pytest

from bnjax import config_lib, train, workdir


def small_dln(**overrides):
  c = config_lib.dln('batch')
  c.model_kwargs.depth = 4
  c.num_steps = 40
  c.checkpoint_every = 10
  c.steps_per_call = 5
  c.probes.ics.layers = (2, 3)
  c.probes.activations.layers = (1, 2)
  for p in c.probes.values():
    p.every = 10
  c.update(overrides)
  return c


def status(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / 'status.json').read_text())


def steps_in(workdir) -> list[int]:
  text = (pathlib.Path(workdir) / 'metrics.jsonl').read_text()
  return [json.loads(l)['step'] for l in text.splitlines()]


def checkpoint_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
  # Without normalisation this step size makes the DLN's loss overflow at step 16.
  config = small_dln(norm='none', learning_rate=2.8e-5, num_steps=200, checkpoint_every=5)
  assert train.train_and_evaluate(config, str(tmp_path)) == 'diverged'
  s = status(tmp_path)
  assert s['state'] == 'diverged'
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines[-1]['step'] == s['step']  # flushed up to the bad step
  assert not (lines[-1]['train_loss'] < float('inf'))  # NaN or inf
  assert s['last_finite_loss'] == lines[-2]['train_loss']
  assert steps_in(tmp_path) == list(range(s['step'] + 1))
  ckpts = checkpoint_steps(tmp_path)
  assert ckpts and max(ckpts) <= s['step'] and s['last_checkpoint'] == max(ckpts)


def _damage_latest(workdir, how):
  latest = pathlib.Path(workdir) / 'checkpoints' / str(max(checkpoint_steps(workdir)))
  if how == 'truncated':
    for f in latest.rglob('*'):
      if f.is_file() and f.parent.name == 'd':
        f.write_bytes(f.read_bytes()[:10])
  else:
    for f in latest.rglob('commit_success.txt'):
      f.unlink()


@pytest.mark.parametrize('how', ['truncated', 'uncommitted'])
def test_damaged_latest_checkpoint_falls_back_to_an_intact_one(tmp_path, how, caplog):
  caplog.set_level(logging.INFO)
  config = small_dln(num_steps=20)
  assert train.train_and_evaluate(config, str(tmp_path)) == 'done'
  assert checkpoint_steps(tmp_path) == [10, 20]
  _damage_latest(tmp_path, how)
  config.num_steps = 30  # a rerun may extend a run
  assert train.train_and_evaluate(config, str(tmp_path)) == 'done'
  assert 'checkpoint at step 20' in caplog.text and 'resumed from checkpoint at step 10' in caplog.text
  assert steps_in(tmp_path) == list(range(30))


def test_unreadable_checkpoints_stop_the_run_instead_of_restarting(tmp_path):
  config = small_dln(num_steps=10, max_checkpoints_to_keep=1)
  train.train_and_evaluate(config, str(tmp_path))
  _damage_latest(tmp_path, 'truncated')
  with pytest.raises(RuntimeError, match='none can be read'):
    train.train_and_evaluate(config, str(tmp_path))
  assert status(tmp_path)['state'] == 'failed'


def test_workdir_of_another_config_is_refused_naming_the_fields(tmp_path):
  train.train_and_evaluate(small_dln(num_steps=5), str(tmp_path))
  before = (tmp_path / 'metrics.jsonl').read_text()
  with pytest.raises(config_lib.ConfigError, match=r'fields differ: learning_rate, norm\)'):
    train.train_and_evaluate(small_dln(num_steps=5, learning_rate=1e-5, norm='lp1'),
                             str(tmp_path))
  assert (tmp_path / 'metrics.jsonl').read_text() == before


def test_other_hosts_never_read_a_half_written_config_json(tmp_path):
  # In a multi-host resume, process 0 rewrites config.json while the others check it
  # (check_workdir). A reader that caught it half written died, and process 0 then timed
  # out in its first collective. Here a reader thread checks it while it is rewritten.
  config = small_dln()
  text = config.to_json(indent=1) + '\n'
  wd = workdir.Workdir(str(tmp_path))
  wd.write_text('config.json', text)
  stop, errors = threading.Event(), []

  def check_until_stopped():
    while not stop.is_set():
      try:
        workdir.check_workdir(str(tmp_path), config)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)

  reader = threading.Thread(target=check_until_stopped)
  reader.start()
  for _ in range(2000):
    wd.write_text('config.json', text)
  stop.set()
  reader.join()
  assert not errors, errors[:3]


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


def test_a_workdir_from_before_a_new_config_field_still_resumes(tmp_path):
  """A field bnjax added since the run started, at its default, is not a config change."""
  assert train.train_and_evaluate(small_dln(num_steps=20), str(tmp_path)) == 'done'
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['data']['skip_unreadable_images']  # as a workdir written before the field
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert train.train_and_evaluate(small_dln(num_steps=30), str(tmp_path)) == 'done'
  assert steps_in(tmp_path) == list(range(30))
  with pytest.raises(config_lib.ConfigError, match='data.skip_unreadable_images'):
    train.train_and_evaluate(small_dln(num_steps=40, data={'skip_unreadable_images': True}),
                             str(tmp_path))
