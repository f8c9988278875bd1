"""bnjax.probes as a package: it imports nothing else from bnjax, and its rooms stay small
(files <= 400 lines, functions <= 50 lines besides their docstring, private functions
<= 5 parameters)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULES = sorted((ROOT / 'bnjax' / 'probes').rglob('*.py'))


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


def _functions(tree):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def _body_lines(fn) -> int:
  """Lines from the first statement after the docstring to the function's end."""
  body = fn.body
  has_doc = (
    isinstance(body[0], ast.Expr)
    and isinstance(body[0].value, ast.Constant)
    and isinstance(body[0].value.value, str)
  )
  start = body[1].lineno if has_doc and len(body) > 1 else body[0].lineno
  return fn.end_lineno - start + 1


def _num_parameters(fn) -> int:
  a = fn.args
  return (
    len(a.posonlyargs)
    + len(a.args)
    + len(a.kwonlyargs)
    + (a.vararg is not None)
    + (a.kwarg is not None)
  )


@pytest.mark.parametrize('path', MODULES, ids=lambda p: p.name)
def test_every_room_is_small(path):
  text = path.read_text()
  assert len(text.splitlines()) <= 400, path.name
  for fn in _functions(ast.parse(text)):
    assert _body_lines(fn) <= 50, (path.name, fn.name, _body_lines(fn))
    if fn.name.startswith('_') and not fn.name.startswith('__'):
      assert _num_parameters(fn) <= 5, (path.name, fn.name, _num_parameters(fn))
