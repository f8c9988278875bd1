"""Every Python example in docs/probes.md runs as written."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'probes.md'
EXAMPLES = re.findall(r'```python\n(.*?)```', DOC.read_text(), re.S)


@pytest.mark.parametrize('index', range(len(EXAMPLES)))
def test_probes_guide_example_runs(index, capsys):
  exec(compile(EXAMPLES[index], f'{DOC.name} example {index + 1}', 'exec'), {'__name__': 'doc'})
  assert capsys.readouterr().out.strip()  # it printed its results


def test_the_guide_has_its_nine_examples():
  # Flax linen, NNX, Equinox, plain JAX, GGN, Fisher, per-block, loss surfaces, sharpness.
  assert len(EXAMPLES) == 9
