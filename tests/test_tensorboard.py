"""TensorBoard events: written beside metrics.jsonl and read back with an independent reader."""

import json
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from bnjax import config_lib, train


def read_summaries(workdir, field: str) -> dict[str, dict[int, object]]:
  """{tag: {step: value.<field>}} of the summary values with ``field`` set ('simple_value':
  scalars, 'histo': HistogramProtos) in every event file (TFRecord parsed by hand)."""
  out: dict[str, dict[int, object]] = {}
  for path in sorted(workdir.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (length,) = struct.unpack('<Q', data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      i += 12 + length + 4  # length, its crc, the record, its crc
      for value in event.summary.value:
        if value.HasField(field):
          out.setdefault(value.tag, {})[event.step] = getattr(value, field)
  return out


def tiny_dln(tensorboard: str):
  c = config_lib.dln('batch')
  c.model_kwargs.depth = 4
  c.num_steps = 20
  c.steps_per_call = 5
  c.checkpoint_every = 10
  c.probes.landscape.every = 5
  c.probes.ics.every = 0
  c.probes.activations.every = 0
  c.tensorboard = tensorboard
  return c


def test_every_metric_and_probe_vector_reaches_tensorboard(tmp_path):
  assert train.train_and_evaluate(tiny_dln('on'), str(tmp_path)) == 'done'
  events = read_summaries(tmp_path, 'simple_value')
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = {l['step']: l['train_loss'] for l in lines}
  assert sorted(events['train_loss']) == list(range(20))
  np.testing.assert_allclose(
    [events['train_loss'][t] for t in range(20)], [losses[t] for t in range(20)], rtol=1e-6
  )
  probed = {l['step']: l['probe/landscape/loss'] for l in lines if 'probe/landscape/loss' in l}
  assert sorted(probed) == [0, 5, 10, 15]
  for i in range(5):  # one scalar per step size
    np.testing.assert_allclose(
      [events[f'probe/landscape/loss/{i}'][t] for t in probed],
      [probed[t][i] for t in probed],
      rtol=1e-6,
    )


def test_tensorboard_off_writes_no_events_and_bad_modes_are_refused(tmp_path):
  assert train.train_and_evaluate(tiny_dln('off'), str(tmp_path / 'off')) == 'done'
  assert not list((tmp_path / 'off').glob('events.out.tfevents.*'))
  with pytest.raises(config_lib.ConfigError, match='tensorboard must be one of'):
    config_lib.validate(tiny_dln('yes'), 1)


def test_the_activation_histograms_reach_tensorboard_as_the_probe_binned_them(tmp_path):
  c = tiny_dln('on')
  c.probes.activations.every = 5
  c.probes.activations.layers = (1, 3)
  assert train.train_and_evaluate(c, str(tmp_path)) == 'done'
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  histograms = read_summaries(tmp_path, 'histo')
  scalars = read_summaries(tmp_path, 'simple_value')
  for k in (1, 3):
    tag = f'probe/activations/layer{k}'
    probed = {l['step']: l for l in lines if np.all(np.asarray(l.get(f'{tag}/hist', -1)) >= 0)}
    assert sorted(probed) == [0, 5, 10, 15]
    assert sorted(histograms[tag]) == [0, 5, 10, 15]  # one histogram a probed step
    for t, line in probed.items():
      counts, limits = list(histograms[tag][t].bucket), histograms[tag][t].bucket_limit
      assert counts == line[f'{tag}/hist'] and sum(counts) == 1000  # the DLN's full batch
      np.testing.assert_allclose(limits, line[f'{tag}/edges'][1:], rtol=1e-6)
    assert sorted(scalars[f'{tag}/mean']) == [0, 5, 10, 15]  # the other fields as before
  assert not [tag for tag in histograms if tag.endswith(('/hist', '/edges'))]
