"""Sweeps: run names, refusing bad sweeps before any run, resuming after a kill."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from bnjax import sweep
from small_runs import ROOT, kill_processes_of, processes_of, start, subprocess_env

TINY_SWEEP = """
from bnjax import config_lib, sweep

def get_sweep():
  c = config_lib.dln('none')
  c.model_kwargs.depth = 4
  c.num_steps = 40
  c.steps_per_call = 10
  c.checkpoint_every = 10
  for probe in c.probes.values():
    probe.every = 0
  c.probes.landscape.every = 10
  return c, sweep.product(sweep.axis('norm', ['none', 'batch']), sweep.axis('seed', [0])){extra}

get_config = sweep.config_getter(get_sweep)
"""


def write_sweep(tmp_path, extra: str = '') -> pathlib.Path:
  f = tmp_path / 'tiny_sweep.py'
  f.write_text(TINY_SWEEP.format(extra=extra))
  return f


def test_product_zip_and_names():
  runs = sweep.product(
    sweep.axis('learning_rate', [0.1, 1e-6]),
    sweep.zip_(sweep.axis('norm', ['none', 'batch']), sweep.axis('seed', [0, 1])),
  )
  assert [sweep.run_name(r) for r in runs] == [
    'learning_rate=0.1_norm=none_seed=0',
    'learning_rate=0.1_norm=batch_seed=1',
    'learning_rate=1e-06_norm=none_seed=0',
    'learning_rate=1e-06_norm=batch_seed=1',
  ]
  assert sweep.run_name({'name': 'bn_lr0.1', 'norm': 'batch'}) == 'bn_lr0.1'
  assert sweep.run_name({'probes.ics.layers': (5, 10)}) == 'layers=5+10'
  with pytest.raises(ValueError, match='different lengths'):
    sweep.zip_(sweep.axis('a', [1, 2]), sweep.axis('b', [1]))


def test_shipped_sweeps_load(tmp_path, tiny_image_tarball):
  for f in sorted((ROOT / 'configs' / 'sweeps').glob('*.py')):
    # The local image-folder data need not be on this machine: any folder will do.
    local_data = (
      [f'--config.dataset=imagefolder:{tiny_image_tarball}']
      if 'imagefolder' in (f.read_text())
      else []
    )
    runs = sweep.load(str(f), str(tmp_path), local_data)
    assert runs and len({r.name for r in runs}) == len(runs), f.name
  dln = {r.name for r in sweep.load(str(ROOT / 'configs/sweeps/paper_dln.py'), str(tmp_path))}
  assert {
    f'{n}_seed{s}'
    for n in (
      'standard_lr1e-6',
      'bn_lr1e-6',
      'l1_lr1e-6',
      'l2_lr1e-6',
      'linf_lr1e-6',
      'standard_lr1e-7',
      'bn_lr1e-7',
    )
    for s in range(5)
  } <= dln


@pytest.mark.parametrize(
  'extra,flags,message',
  [
    (" + [{'nmr': 'batch'}]", [], "run nmr=batch: config has no field 'nmr'"),
    (" + [{'name': 'a,b'}]", [], "run name 'a,b' has characters"),
    (
      " + [{'name': 'x', 'probes.landscape.evry': 5}]",
      [],
      "run x: config has no field 'probes.landscape.evry'",
    ),
    (
      " + [{'name': 'y', 'learning_rate': 'fast'}]",
      [],
      "run y: field 'learning_rate' cannot take 'fast'",
    ),
    (" + [{'name': 'z', 'norm': 'group'}]", [], "run z: unknown normaliser 'group'"),
    ('', ['--config.num_stepz=3'], "config has no field 'num_stepz'"),
    ('', ['--only=norm=batch_seed=0,nope'], "--only names no run ['nope']"),
  ],
)
def test_a_bad_sweep_is_refused_before_any_run(tmp_path, capsys, extra, flags, message):
  f = write_sweep(tmp_path, extra)
  root = tmp_path / 'root'
  assert sweep.main([str(f), f'--root={root}', *flags]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1
  assert not root.exists()


def test_dry_run_prints_one_command_per_run(tmp_path, capsys):
  f = write_sweep(tmp_path)
  assert sweep.main([str(f), f'--root={tmp_path}/r', '--dry-run', '--config.num_steps=7']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2
  assert lines[0].endswith(
    f'-m bnjax.main --config={f}:norm=none_seed=0 '
    f'--workdir={tmp_path}/r/norm=none_seed=0 --config.num_steps=7'
  )


def _status(workdir):
  try:
    return json.loads((workdir / 'status.json').read_text()).get('state')
  except (OSError, ValueError):
    return None


@pytest.fixture
def leftovers(tmp_path):
  """Kills, after the test, any process it started that is still there (a failed test)."""
  yield
  kill_processes_of(tmp_path)


def _start_sweep(tmp_path, *flags):
  f = write_sweep(tmp_path)
  cmd = [sys.executable, '-m', 'bnjax.sweep', str(f), f'--root={tmp_path / "root"}', *flags]
  return cmd, start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until_gone(tmp_path, timeout):
  deadline = time.time() + timeout
  while processes_of(tmp_path):
    assert time.time() < deadline, f'still running: {processes_of(tmp_path)}'
    time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, leftovers):
  root = tmp_path / 'root'
  cmd, first = _start_sweep(tmp_path)
  done_run = root / 'norm=none_seed=0'
  deadline = time.time() + 300
  while _status(done_run) != 'done':
    assert time.time() < deadline and first.poll() is None, first.stdout.read()
    time.sleep(0.2)
  os.killpg(first.pid, signal.SIGKILL)  # the sweep; the run it has started then stops too
  first.wait()
  _wait_until_gone(tmp_path, 120)
  before = (done_run / 'metrics.jsonl').read_text()

  second = subprocess.run(
    cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert second.returncode == 0, second.stdout + second.stderr
  assert '[sweep] norm=none_seed=0: done already, skipped' in second.stdout
  assert (done_run / 'metrics.jsonl').read_text() == before  # not redone
  with open(root / 'summary.csv') as csv_file:
    rows = list(csv.DictReader(csv_file))
  assert [(r['name'], r['state'], r['steps']) for r in rows] == [
    ('norm=none_seed=0', 'done', '40'),
    ('norm=batch_seed=0', 'done', '40'),
  ]
  assert (root / 'training.png').stat().st_size > 10_000
  assert (root / 'figures' / 'fig10.png').exists()  # the DLN landscape, drawn at the end
  steps = [
    json.loads(l)['step']
    for l in (root / 'norm=batch_seed=0' / 'metrics.jsonl').read_text().splitlines()
  ]
  assert sorted(set(steps)) == list(range(40)) and len(steps) == 40  # every step once


def _kill_as(how: str, proc: subprocess.Popen) -> None:
  if how == 'Ctrl-C':  # a terminal sends SIGINT to its foreground process group
    os.killpg(proc.pid, signal.SIGINT)
  else:  # `kill -TERM PID`, `kill -HUP PID`, `kill -9 PID` to the runner alone
    proc.send_signal(getattr(signal, how))


@pytest.mark.slow
@pytest.mark.parametrize(
  'how,state,exit_status',
  [
    ('Ctrl-C', 'interrupted', 130),
    ('SIGTERM', 'preempted', 143),
    ('SIGHUP', 'preempted', 129),
    ('SIGKILL', 'preempted', -9),
  ],
)
def test_a_signal_to_a_sweep_stops_its_runs_after_a_checkpoint_and_a_rerun_finishes(
  tmp_path, leftovers, how, state, exit_status
):
  """No run outlives its sweep: each signal reaches both runs in flight (through the runner;
  for SIGKILL, as the kernel's SIGTERM when the runner dies), each checkpoints and says
  so, and the rerun resumes them."""
  root = tmp_path / 'root'
  runs = [root / 'norm=none_seed=0', root / 'norm=batch_seed=0']
  cmd, runner = _start_sweep(tmp_path, '--parallel=2', '--config.num_steps=100000')
  deadline = time.time() + 300
  while not all(list(r.glob('checkpoints/*/commit_success.txt')) for r in runs):
    assert time.time() < deadline and runner.poll() is None, runner.communicate()[0]
    time.sleep(0.2)
  assert len(processes_of(tmp_path)) == 3  # the runner and its two runs
  _kill_as(how, runner)
  out, _ = runner.communicate(timeout=120)
  assert runner.returncode == exit_status, out
  _wait_until_gone(tmp_path, 60 if how == 'SIGKILL' else 0)  # the runner waited for its runs
  if how != 'SIGKILL':
    assert 'rerun to resume' in out
  for run in runs:
    s = json.loads((run / 'status.json').read_text())
    assert s['state'] == state, (run.name, s)
    assert s['last_checkpoint'] == s['step'] and (run / f'checkpoints/{s["step"]}').exists()
    assert s['signal'] == ('SIGINT' if how == 'Ctrl-C' else 'SIGTERM' if how == 'SIGKILL' else how)
  stopped_at = {r.name: json.loads((r / 'status.json').read_text())['step'] for r in runs}

  end = max(stopped_at.values()) + 20
  rerun = subprocess.run(
    [*cmd[:-1], f'--config.num_steps={end}'],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  for run in runs:
    assert _status(run) == 'done'
    assert (
      f'resumed from checkpoint at step {stopped_at[run.name]}'
      in (root / 'logs' / f'{run.name}.log').read_text()
    )
    steps = [json.loads(l)['step'] for l in (run / 'metrics.jsonl').read_text().splitlines()]
    assert steps == list(range(end))  # every step once
