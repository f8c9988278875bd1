"""Data sources (tfds through mock_data, the local image tarball, DLN) and batching."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bnjax import data, image_sources


def test_tfds_source_reads_without_tensorflow_and_standardises():
  with tfds.testing.mock_data(num_examples=24):
    ds = data.load('cifar10')
  assert ds.train.inputs.shape == (24, 32, 32, 3) and ds.train.inputs.dtype == np.float32
  assert ds.num_classes == 10 and ds.test is not None
  np.testing.assert_allclose(ds.train.inputs.mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(ds.train.inputs.std((0, 1, 2)), 1, atol=1e-4)


def test_imagefolder_tarball_is_decoded_and_cached(tiny_image_tarball, tmp_path):
  name = f'imagefolder:{tiny_image_tarball}'
  ds = data.load(name, cache_dir=str(tmp_path))
  assert ds.train.inputs.shape == (120, 32, 32, 3) and ds.test.inputs.shape == (30, 32, 32, 3)
  assert ds.num_classes == 3
  # Classes in sorted folder order: airplane=0, bird=1, cat=2; 'cat' images are darkest.
  assert list(np.bincount(ds.train.targets)) == [40, 40, 40]
  means = [ds.train.inputs[ds.train.targets == c].mean() for c in range(3)]
  assert means[2] < means[0] < means[1]
  assert len(list(tmp_path.glob('imagefolder-*.npz'))) == 1
  again = data.load(name, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again.train.inputs, ds.train.inputs)


def test_bad_names_and_paths_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10.*imagefolder:PATH"):
    data.check_name('imagenet')
  with pytest.raises(ValueError, match='does not exist'):
    data.check_name(f'imagefolder:{tmp_path}/missing.tar.gz')


def test_dln_data_is_seeded_linear_regression():
  a, b = data.dln_gaussian(0), data.dln_gaussian(0)
  np.testing.assert_array_equal(a.train.inputs, b.train.inputs)
  assert a.train.inputs.shape == (1000, 10) and a.test is None
  x, y = a.train.inputs.astype(np.float64), a.train.targets.astype(np.float64)
  coef, res, *_ = np.linalg.lstsq(x, y, rcond=None)
  assert res.max() < 1e-6 * (y**2).sum()  # exactly linear in x
  assert not np.array_equal(data.dln_gaussian(1).train.inputs, a.train.inputs)


def test_batches_are_a_deterministic_epoch_permutation():
  n, bs = 50, 8
  first_epoch = np.concatenate([data.batch_indices(n, bs, 0, s) for s in range(6)])
  assert len(set(first_epoch)) == 48  # no repeats within an epoch, remainder dropped
  np.testing.assert_array_equal(data.batch_indices(n, bs, 0, 3), data.batch_indices(n, bs, 0, 3))
  assert not np.array_equal(data.batch_indices(n, bs, 0, 6), data.batch_indices(n, bs, 0, 0))
  assert not np.array_equal(data.batch_indices(n, bs, 1, 0), data.batch_indices(n, bs, 0, 0))


def test_each_host_reads_only_its_slice(monkeypatch):
  split = data.Split(np.arange(40, dtype=np.float32)[:, None], np.arange(40))
  full = data.batch_indices(40, 8, 0, 2)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  pieces = []
  for host in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda host=host: host)
    pieces.append(data.local_train_batches(split, 8, 0, 2, 1)['targets'][0])
  np.testing.assert_array_equal(np.concatenate(pieces), full)
  with pytest.raises(ValueError, match='not divisible by 2 hosts'):
    data.host_slice(7)


def test_without_tensorflow_preparing_or_reading_an_unprepared_dataset_is_one_line(
  capsys, monkeypatch, tmp_path
):
  monkeypatch.setattr(image_sources, 'tensorflow_available', lambda: False)
  assert data.main(['prepare', 'cifar10']) == 1
  err = capsys.readouterr().err
  assert (
    err
    == 'bnjax.data: preparing tfds dataset \'cifar10\' needs TensorFlow: pip install -e ".[prepare]"\n'
  )
  assert data.main(['prepare', 'dln_gaussian']) == 1
  assert "'dln_gaussian' is not a tfds dataset" in capsys.readouterr().err
  with pytest.raises(data.DataError) as e:
    data.load('cifar10', tfds_data_dir=str(tmp_path))
  assert str(e.value) == (
    f"tfds dataset 'cifar10' is not prepared under {tmp_path}; prepare it once (needs "
    'TensorFlow and internet): pip install -e ".[prepare]" && python -m bnjax.data prepare cifar10'
  )


def test_preparing_offline_is_one_line_saying_what_to_do(capsys, monkeypatch, tmp_path):
  """The real tfds download through a proxy that refuses every connection (no network)."""
  pytest.importorskip('tensorflow')
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(downloader, 'MAX_RETRIES', 0)  # tfds retries for minutes otherwise
  for var in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
    monkeypatch.setenv(var, 'http://127.0.0.1:9')  # the discard port: connection refused
  monkeypatch.delenv('NO_PROXY', raising=False)
  monkeypatch.delenv('no_proxy', raising=False)
  assert data.main(['prepare', 'cifar10', '--data_dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err
  assert err.startswith(
    "bnjax.data: downloading tfds dataset 'cifar10' failed: the network is "
    'unreachable from here (ProxyError: '
  )
  assert 'python -m bnjax.data prepare cifar10 --data_dir=DIR' in err and 'TFDS_DATA_DIR' in err
