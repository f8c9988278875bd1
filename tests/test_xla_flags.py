"""bnjax.main runs with bnjax's XLA flags for its model; a library import never changes
the user's."""

import os
import subprocess
import sys

import pytest

from bnjax import xla_flags
from conftest import ROOT

# Runs bnjax.main's real main() on a config with training replaced by a probe: the
# XLA_FLAGS the backend started with, and whether XLA:CPU handed the DLN's batch mean
# ([1000, 10] -> [10]) and its layer's matmul ([1000, 10] x [10, 10]) to YNNPACK in the
# compiled programs.
_MAIN = """
import os, sys
from absl import app
import bnjax.main as m
from bnjax import train
def probe(config, workdir, stop=None):
  import jax, jax.numpy as jnp
  y, w = jnp.ones((1000, 10)), jnp.ones((10, 10))
  mean = jax.jit(lambda y: jnp.mean(y, 0)).lower(y).compile().as_text()
  matmul = jax.jit(jnp.matmul).lower(y, w).compile().as_text()
  print(os.environ['XLA_FLAGS'], '|', 'ynn' in mean, '|', 'ynn' in matmul)
  return 'done'
train.train_and_evaluate = probe
sys.argv = ['main', '--config=%s', '--workdir=unused']
app.run(m.main, flags_parser=m._parse_flags)
"""


def _run(code: str, env_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if env_flags is not None:
    env['XLA_FLAGS'] = env_flags
  run = subprocess.run(
    [sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=ROOT
  )
  assert run.returncode == 0, run.stderr[-2000:]
  return run.stdout.strip()


def _main_with(config: str, env_flags: str | None) -> tuple[str, tuple[bool, bool]]:
  """XLA_FLAGS as the run's backend saw them; (mean on YNNPACK, matmul on YNNPACK)."""
  flags, mean, matmul = _run(_MAIN % (ROOT / 'configs' / config), env_flags).rsplit(' | ', 2)
  return flags, (mean == 'True', matmul == 'True')


def test_main_sets_the_models_flags_before_jax_starts_and_keeps_the_users():
  vgg_flags, vgg_ynn = _main_with('vgg_bn.py', None)
  dln_flags, dln_ynn = _main_with('dln_bn.py', None)
  ours = lambda model: ' '.join(f'{k}={v}' for k, v in xla_flags.flags_for(model).items())
  assert vgg_flags == ours('vgg16') and dln_flags == ours('dln') and ours('dln') != ours(None)
  other = '--xla_force_host_platform_device_count=2'
  assert _main_with('dln_bn.py', other)[0] == f'{other} {ours("dln")}'
  mine = ours(None)  # a value of bnjax's own flag, other than the DLN's
  user_flags, user_ynn = _main_with('dln_bn.py', mine)
  assert user_flags == mine  # the user's choice wins
  if not all(vgg_ynn):
    pytest.skip(f'XLA:CPU uses no YNNPACK reduction or matmul here {vgg_ynn}')
  # The DLN's flags reached the backend (neither op on YNNPACK); the user's did too.
  assert dln_ynn == (False, False) and user_ynn == (True, True)


def test_importing_the_probes_leaves_xla_flags_alone():
  code = 'import os; from bnjax import probes; print(os.environ.get("XLA_FLAGS", "unset"))'
  assert _run(code, None) == 'unset'
