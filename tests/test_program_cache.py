"""bnjax.program_cache: a traced program read back instead of traced again, computing what a
plain jax.jit of the same function computes."""

import logging
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from bnjax import program_cache, train
from small_runs import metric_lines, small_dln


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict


def step(state, batch, scale):
  """One gradient step of a least-squares loss on a batch ([B, 3]); a custom pytree in and out."""
  loss_fn = lambda w: jnp.mean((batch @ w) ** 2) * scale
  loss, grad = jax.value_and_grad(loss_fn)(state.params['w'])
  new = State(state.step + 1, {'w': state.params['w'] - 0.1 * grad})
  return new, {'loss': loss, 'per_example': batch @ state.params['w']}


def shardings():
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  replicated = NamedSharding(mesh, P())
  return (replicated, NamedSharding(mesh, P('data')), replicated), (replicated, replicated)


def cached(directory, traces, key='config'):
  """A new process's view: a fresh program_cache.jit of ``step``, counting its traces."""

  def counted(*args):
    traces.append(1)
    return step(*args)

  ins, outs = shardings()
  return program_cache.jit(
    counted,
    key=key,
    directory=directory,
    in_shardings=ins,
    out_shardings=outs,
    donate_argnums=(0,),
    name='step',
  )


def inputs(rows=16):
  state = State(jnp.int32(0), {'w': jnp.arange(3.0)})
  batch = jax.random.normal(jax.random.key(0), (rows, 3))
  return state, batch, jnp.float32(2.0)


def assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_a_second_run_reads_the_program_back_instead_of_tracing_and_computes_the_same(tmp_path):
  ins, outs = shardings()
  expected = jax.jit(step, in_shardings=ins, out_shardings=outs)(*inputs())
  first, second = [], []
  out = cached(tmp_path, first)(*inputs())
  assert len(first) == 1
  assert len(list((tmp_path / program_cache.SUBDIR).glob('step-*.pkl'))) == 1
  assert_same(out, expected)
  again = cached(tmp_path, second)
  assert_same(again(*inputs()), expected)
  assert_same(again(*inputs()), expected)
  assert second == []  # read back, never traced
  state, batch, scale = inputs()
  placed = jax.device_put(state, ins[0])  # as restored from a checkpoint: another sharding
  assert_same(again(placed, batch, scale), expected)
  assert second == []
  assert isinstance(out[0], State) and out[0].params['w'].sharding == ins[0]


def test_another_key_or_shape_traces_anew_and_keeps_its_own_entry(tmp_path):
  traces = []
  cached(tmp_path, traces)(*inputs())
  cached(tmp_path, traces, key='another config')(*inputs())
  cached(tmp_path, traces)(*inputs(rows=8))
  assert len(traces) == 3
  assert len(list((tmp_path / program_cache.SUBDIR).iterdir())) == 3


def test_a_changed_source_file_changes_the_code_digest(tmp_path):
  (tmp_path / 'models').mkdir()
  (tmp_path / 'models' / 'vgg.py').write_text('WIDTH = 64\n')
  before = program_cache.source_digest(tmp_path)
  assert program_cache.source_digest(tmp_path) == before
  (tmp_path / 'models' / 'vgg.py').write_text('WIDTH = 65\n')
  assert program_cache.source_digest(tmp_path) != before


def test_an_unreadable_entry_is_traced_again_with_a_warning(tmp_path, caplog):
  cached(tmp_path, [])(*inputs())
  (entry,) = (tmp_path / program_cache.SUBDIR).iterdir()
  entry.write_bytes(b'half written')
  traces = []
  with caplog.at_level(logging.WARNING):
    out = cached(tmp_path, traces)(*inputs())
  assert len(traces) == 1 and 'unreadable' in caplog.text
  ins, outs = shardings()
  assert_same(out, jax.jit(step, in_shardings=ins, out_shardings=outs)(*inputs()))
  later = []
  cached(tmp_path, later)(*inputs())
  assert later == []  # the entry was written again, whole


def test_a_program_with_a_host_callback_runs_as_plain_jit(tmp_path, caplog):
  seen = []

  def with_callback(state, batch, scale):
    jax.debug.callback(lambda s: seen.append(int(s)), state.step)
    return step(state, batch, scale)

  ins, outs = shardings()
  f = program_cache.jit(
    with_callback, key='k', directory=tmp_path, in_shardings=ins, out_shardings=outs
  )
  with caplog.at_level(logging.WARNING):
    out = f(*inputs())
  jax.effects_barrier()
  assert seen and 'not exportable' in caplog.text
  assert_same(out, jax.jit(step, in_shardings=ins, out_shardings=outs)(*inputs()))


@pytest.fixture
def cache_dir_option():
  """Sets jax_compilation_cache_dir, where train reads the program cache's directory;
  restored afterwards."""
  before = jax.config.jax_compilation_cache_dir
  yield lambda value: jax.config.update('jax_compilation_cache_dir', value)
  jax.config.update('jax_compilation_cache_dir', before)


def test_a_run_through_the_cache_trains_exactly_as_a_plain_jit(tmp_path, cache_dir_option, caplog):
  """The small DLN with every probe, 40 steps: the same metrics line for line, probes included,
  traced and read back (a second run) or jitted as before (no compilation cache)."""
  caplog.set_level(logging.INFO)
  runs = {}
  for name, cache in (('plain', None), ('traced', tmp_path / 'c'), ('read', tmp_path / 'c')):
    cache_dir_option(cache and str(cache))
    assert train.train_and_evaluate(small_dln(), str(tmp_path / name)) == 'done'
    timeless = lambda line: {k: v for k, v in line.items() if 'per_second' not in k}
    runs[name] = [timeless(line) for line in metric_lines(tmp_path / name)]
  for program in ('chunk', 'init'):  # each traced in the first run, read back in the second
    assert len(re.findall(rf'traced program kept in \S+/{program}-', caplog.text)) == 1
    assert (
      len(re.findall(rf'traced program read from \S+/{program}-\S+: tracing skipped', caplog.text))
      == 1
    )
  assert len(runs['plain']) == 40 and any('probe/landscape/beta' in l for l in runs['plain'])
  assert runs['traced'] == runs['plain'] and runs['read'] == runs['plain']
