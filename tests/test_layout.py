"""The package's size limits (issue 23): no file under bnjax/ over 400 lines, no function
over 50 lines (its docstring aside), no private function with more than 5 parameters.

(Formatting itself, ``ruff format --check`` and ``ruff check``, is .ci/run's job.)
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50
MAX_PRIVATE_PARAMS = 5


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
  """Lines after the docstring (or, without one, after the signature) to the last line."""
  first = node.body[0]
  if (
    isinstance(first, ast.Expr)
    and isinstance(first.value, ast.Constant)
    and isinstance(first.value.value, str)
  ):
    return node.end_lineno - first.end_lineno
  return node.end_lineno - (first.lineno - 1)


def num_params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
  a = node.args
  return (
    len(a.posonlyargs)
    + len(a.args)
    + len(a.kwonlyargs)
    + (a.vararg is not None)
    + (a.kwarg is not None)
  )


def is_private(name: str) -> bool:
  """_name (and __name), not a dunder such as __init__."""
  return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def layout_problems(path: pathlib.Path) -> list[str]:
  """Every limit ``path`` (a Python file) breaks, one line each: 'file:line what'."""
  text = path.read_text()
  problems = []
  if (n := len(text.splitlines())) > MAX_FILE_LINES:
    problems.append(f'{path}: {n} lines > {MAX_FILE_LINES}')
  for node in ast.walk(ast.parse(text, str(path))):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    if (n := function_lines(node)) > MAX_FUNCTION_LINES:
      problems.append(f'{path}:{node.lineno} {node.name}: {n} lines > {MAX_FUNCTION_LINES}')
    if is_private(node.name) and (n := num_params(node)) > MAX_PRIVATE_PARAMS:
      problems.append(
        f'{path}:{node.lineno} {node.name}: {n} parameters > {MAX_PRIVATE_PARAMS} (private)'
      )
  return problems


def test_the_package_keeps_its_size_limits():
  files = sorted((ROOT / 'bnjax').rglob('*.py'))
  assert len(files) > 50  # the package itself, not an empty glob
  problems = [p for f in files for p in layout_problems(f)]
  assert not problems, '\n'.join(problems)


def _function(name: str, params: str, body_lines: int, docstring: bool = True) -> str:
  doc = ['  """A docstring', '', '  over three lines."""'] if docstring else []
  return '\n'.join([f'def {name}({params}):', *doc, *['  x = 1'] * body_lines]) + '\n'


def _indented(code: str) -> str:
  return ''.join(f'  {line}\n' for line in code.splitlines())


def _padded(code: str, lines: int) -> str:
  return code + '\n' * (lines - len(code.splitlines()))


def test_the_limits_catch_what_they_name(tmp_path):
  at_limits = tmp_path / 'at_limits.py'
  at_limits.write_text(
    _padded(
      _function('fifty', 'a', 50)
      + _function('no_docstring', '', 50, docstring=False)
      + _function('_five', 'a, /, b, *c, d, **e', 1)
      + _function('public', 'a, b, c, d, e, f', 1)
      + 'class C:\n'
      + _indented(_function('__init__', 'self, a, b, c, d, e', 1)),
      MAX_FILE_LINES,
    )
  )
  assert layout_problems(at_limits) == []

  over = tmp_path / 'over.py'
  over.write_text(
    _padded(
      _function('too_long', 'a', 51)
      + _function('no_docstring', '', 51, docstring=False)
      + _function('_six', 'a, /, b, *c, d, e, **f', 1)
      + 'class C:\n'
      + _indented(_function('_method', 'self', 51))
      + _function('outer', '', 1)
      + _indented(_function('_inner', 'a, b, c, d, e, f', 1)),
      MAX_FILE_LINES + 1,
    )
  )
  problems = layout_problems(over)
  for expected in (
    f'over.py: {MAX_FILE_LINES + 1} lines > {MAX_FILE_LINES}',
    'too_long: 51 lines > 50',
    'no_docstring: 51 lines > 50',
    '_six: 6 parameters > 5 (private)',
    '_method: 51 lines > 50',
    '_inner: 6 parameters > 5 (private)',
  ):
    assert sum(p.endswith(expected) for p in problems) == 1, (expected, problems)
  assert len(problems) == 6, problems


@pytest.mark.parametrize(
  'name,private',
  [('_f', True), ('__f', True), ('f', False), ('__init__', False), ('__call__', False)],
)
def test_private_means_one_leading_underscore_not_a_dunder(name, private):
  assert is_private(name) == private
