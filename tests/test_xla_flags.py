"""bnjax.main runs with bnjax's XLA flags; a library import never changes the user's."""

import os
import subprocess
import sys

from bnjax import xla_flags


def _run(code: str, env_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if env_flags is not None:
    env['XLA_FLAGS'] = env_flags
  return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_main_sets_the_flags_before_jax_and_keeps_the_users():
  code = ('import sys, os; import bnjax.main; '
          'print("jax" in sys.modules, os.environ["XLA_FLAGS"])')
  ours = ' '.join(f'{k}={v}' for k, v in xla_flags.CPU_FLAGS.items())
  assert _run(code, None) == f'False {ours}'
  assert _run(code, '--xla_foo=1') == f'False --xla_foo=1 {ours}'
  flag = next(iter(xla_flags.CPU_FLAGS))
  assert _run(code, f'{flag}=mine') == f'False {flag}=mine'  # the user's choice wins


def test_importing_the_probes_leaves_xla_flags_alone():
  code = 'import os; from bnjax import probes; print(os.environ.get("XLA_FLAGS", "unset"))'
  assert _run(code, None) == 'unset'
