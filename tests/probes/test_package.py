"""bnjax.probes as a package: it imports nothing else from bnjax (its rooms' size limits
are tests/test_layout.py's, over all of bnjax/)."""

import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_importing_bnjax_probes_imports_no_other_bnjax_module():
  code = (
    'import bnjax.probes, sys; print(bnjax.probes.__file__); '
    "print(sorted(m for m in sys.modules if m.startswith('bnjax') "
    "and not m.startswith('bnjax.probes')))"
  )
  path = os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p)
  out = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=path),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  where, imported = out.stdout.splitlines()
  assert pathlib.Path(where).resolve().is_relative_to(ROOT / 'bnjax' / 'probes')  # this checkout
  assert imported == "['bnjax']"  # the package root only (a docstring and __version__)
