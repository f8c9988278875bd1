"""Launchers: shellcheck-clean, and their --dry-run prints exactly the commands they would run."""

import json
import os
import shlex
import subprocess
import sys

from test_train import ROOT

SWEEP = 'configs/sweeps/paper_vgg.py'
RUNS = ['bn_lr0.1', 'standard_lr0.1', 'noisy_bn_lr0.1', 'standard_lr0.5', 'bn_lr0.5',
        'lp1_lr0.1', 'lp2_lr0.1', 'lpinf_lr0.1', 'bn_lr0.01', 'standard_lr0.01']


def run_script(args, **env):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHON=sys.executable, **env))


def test_shell_scripts_pass_shellcheck():
  scripts = sorted(str(p) for p in (ROOT / 'launch').glob('*.sh'))
  out = run_script(['shellcheck', *scripts])
  assert out.returncode == 0, out.stdout


def test_tpu_vm_dry_run_sets_up_every_worker_then_runs_each_run_on_all(tmp_path):
  out = run_script(['launch/tpu_vm.sh', '--dry-run', 'my-v4-16', 'us-central2-b', SWEEP,
                    '/mnt/shared/paper_vgg', '--config.num_steps=20'],
                   BNJAX_REPO='https://example.com/bnjax.git', TFDS_DATA_DIR='/mnt/shared/tfds')
  assert out.returncode == 0, out.stderr
  commands = [shlex.split(line) for line in out.stdout.splitlines()]
  assert len(commands) == 1 + len(RUNS)
  for cmd in commands:
    assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-v4-16']
    assert '--zone=us-central2-b' in cmd and '--worker=all' in cmd
  setup = commands[0][-1].removeprefix('--command=')
  for part in ('export TFDS_DATA_DIR=/mnt/shared/tfds', 'git clone -q https://example.com/bnjax.git bnjax',
               "pip install -q -e '.[prepare]' 'jax[tpu]'", 'python -m bnjax.data prepare cifar10'):
    assert part in setup, part
  for cmd, name in zip(commands[1:], RUNS):
    run = cmd[-1].removeprefix('--command=')
    assert run.endswith(f'python -m bnjax.main --multihost --config={SWEEP}:{name} '
                        f'--workdir=/mnt/shared/paper_vgg/{name} --config.num_steps=20'), run


def test_slurm_dry_run_is_one_srun_per_unfinished_run_over_every_node(tmp_path):
  root = tmp_path / 'root'
  (root / 'bn_lr0.1').mkdir(parents=True)
  (root / 'bn_lr0.1' / 'status.json').write_text(json.dumps({'state': 'done', 'step': 15000}))
  out = run_script(['launch/slurm.sh', '--dry-run', SWEEP, str(root), '--only=bn_lr0.1,bn_lr0.5'],
                   SLURM_NNODES='2')
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [shlex.join([
      'srun', '--nodes=2', '--ntasks-per-node=1', sys.executable, '-m', 'bnjax.main', '--multihost',
      f'--config={SWEEP}:bn_lr0.5', f'--workdir={root}/bn_lr0.5'])]
  assert 'bn_lr0.1: done already, skipped' in out.stderr


def test_a_launcher_refuses_a_bad_sweep_before_any_command():
  out = run_script(['launch/slurm.sh', '--dry-run', SWEEP, '/tmp/x', '--config.num_stepz=3'])
  assert out.returncode != 0 and not out.stdout
  assert "config has no field 'num_stepz'" in out.stderr
