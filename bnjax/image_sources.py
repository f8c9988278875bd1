"""The image sources behind ``bnjax.data.load``: tfds datasets and image folders, read into
host memory as uint8 images and labels (``RawImages``), before any preprocessing.

An image folder (or tarball) is decoded once and cached as ``.npz`` under the cache dir
(``default_cache_dir``: $BNJAX_CACHE, else ~/.cache/bnjax), keyed by a fingerprint of the
source. A tfds dataset is read from its ArrayRecord files without TensorFlow, and
prepared first when it is missing and TensorFlow is installed.
"""

import dataclasses
import hashlib
import importlib.util
import io
import logging
import os
import pathlib
import tarfile

import numpy as np

from bnjax.tfds_download import download_and_prepare

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


class DataError(RuntimeError):
  """A dataset that cannot be read as it stands; the one-line message says what to do."""


def tensorflow_available() -> bool:
  """Whether TensorFlow is installed: preparing a tfds dataset needs it, reading does not."""
  return importlib.util.find_spec('tensorflow') is not None


@dataclasses.dataclass(frozen=True)
class RawImages:
  """A source's train and test images as stored, uint8, before standardisation."""

  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  skipped: int = 0  # unreadable images left out


def default_cache_dir() -> str:
  """bnjax's cache (decoded image folders, compiled programs): $BNJAX_CACHE, ~/.cache/bnjax."""
  return os.environ.get('BNJAX_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'bnjax'))


def _source_fingerprint(path: pathlib.Path) -> str:
  """sha256 of a tarball's bytes, or of a folder's file names and sizes."""
  h = hashlib.sha256()
  if path.is_file():
    with open(path, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 20), b''):
        h.update(chunk)
  else:
    for p in sorted(path.rglob('*')):
      if p.is_file():
        h.update(f'{p.relative_to(path)}:{p.stat().st_size};'.encode())
  return h.hexdigest()[:16]


def load_imagefolder(
  path: pathlib.Path, cache_dir: pathlib.Path, skip_unreadable: bool = False
) -> RawImages:
  """The images of ``{train,test}/<class>/<image>`` under ``path`` (a folder or tarball).

  Decoded once, then read from ``cache_dir``'s ``.npz``. Unreadable images raise
  DataError, unless ``skip_unreadable``: then they are left out, counted, not cached.
  """
  cache = cache_dir / f'imagefolder-{_source_fingerprint(path)}.npz'
  if cache.exists():
    with np.load(cache) as z:
      return RawImages(
        z['train_images'],
        z['train_labels'],
        z['test_images'],
        z['test_labels'],
        int(z['num_classes']),
      )
  logging.info('decoding %s once; caching to %s', path, cache)
  raw, unreadable = _decode_imagefolder(path)
  if unreadable:
    first, error = unreadable[0]
    if not skip_unreadable:
      raise DataError(
        f'{path}: cannot read image {first} ({error}); {len(unreadable) - 1} other '
        f'image(s) unreadable too. Replace them, or set '
        '--config.data.skip_unreadable_images=True to train without them'
      )
    logging.warning(
      '%s: left out %d unreadable image(s), e.g. %s (%s)', path, len(unreadable), first, error
    )
    return dataclasses.replace(raw, skipped=len(unreadable))  # never cached: a partial decode
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_name(cache.name + f'.tmp{os.getpid()}.npz')
  np.savez(
    tmp,
    train_images=raw.train_images,
    train_labels=raw.train_labels,
    test_images=raw.test_images,
    test_labels=raw.test_labels,
    num_classes=raw.num_classes,
  )
  os.replace(tmp, cache)  # atomic: concurrent hosts never read a half-written cache
  return raw


def _decode_imagefolder(path: pathlib.Path) -> tuple[RawImages, list[tuple[str, str]]]:
  """Decodes ``{train,test}/<class>/<image>``; class index = sorted class-folder order.

  Returns the readable images and [(file name, error)] of the unreadable ones.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  files: dict[str, list[tuple[str, str, bytes]]] = {'train': [], 'test': []}  # class, name, bytes
  if path.is_file():
    with tarfile.open(path) as tar:
      for member in tar:
        parts = pathlib.PurePosixPath(member.name).parts
        if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
          split_at = [i for i, p in enumerate(parts) if p in files]
          if split_at and len(parts) - split_at[-1] == 3:
            i = split_at[-1]
            files[parts[i]].append((parts[i + 1], member.name, tar.extractfile(member).read()))
  else:
    for split in files:
      for p in sorted((path / split).glob('*/*')):
        if p.suffix.lower() in IMAGE_SUFFIXES:
          files[split].append((p.parent.name, str(p), p.read_bytes()))
  if not files['train'] or not files['test']:
    raise ValueError(f'{path} holds no train/<class>/<image> and test/<class>/<image> files')
  classes = sorted({c for c, _, _ in files['train']})
  index = {c: i for i, c in enumerate(classes)}
  unreadable: list[tuple[str, str]] = []

  def read(name: str, data: bytes) -> np.ndarray | None:
    try:
      return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for damaged files
      unreadable.append((name, f'{type(e).__name__}: {e}'))
      return None

  def decode(items):
    items = sorted(items, key=lambda item: item[0])  # stable: class, then archive order
    decoded = [(c, read(name, b)) for c, name, b in items]
    decoded = [(c, im) for c, im in decoded if im is not None]
    images = np.stack([im for _, im in decoded])
    labels = np.array([index[c] for c, _ in decoded], np.int32)
    return images, labels

  tr_x, tr_y = decode(files['train'])
  te_x, te_y = decode(files['test'])
  return RawImages(tr_x, tr_y, te_x, te_y, len(classes)), unreadable


def load_tfds(name: str, data_dir: str | None) -> RawImages:
  """A tfds dataset's train and test splits, read from ArrayRecord files without TensorFlow.

  A dataset not prepared yet is prepared here when TensorFlow is installed (as the flax
  examples do: the first run on a fresh host with internet downloads it); otherwise a
  DataError says what to install and run.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = data_dir or 'the default TFDS data dir'
  how = (
    f'prepare it once (needs TensorFlow and internet): pip install -e ".[prepare]" && '
    f'python -m bnjax.data prepare {name}'
  )
  try:
    # ArrayRecord from the start: tfds fixes a builder's format at its first construction.
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  except Exception as e:  # tfds raises many types for unknown or unreadable datasets
    first_line = (str(e).splitlines() or [''])[0][:200]
    raise DataError(
      f'tfds dataset {name!r} cannot be read under {where} '
      f'({type(e).__name__}: {first_line}); {how}'
    ) from e
  sources = lambda: {s: builder.as_data_source(split=s) for s in ('train', 'test')}
  try:
    split_sources = sources()
  except Exception as e:  # not prepared (tfds raises several types)
    if not tensorflow_available():
      raise DataError(f'tfds dataset {name!r} is not prepared under {where}; {how}') from e
    logging.warning('tfds dataset %r is not prepared under %s: preparing it now', name, where)
    download_and_prepare(builder, name, data_dir)
    split_sources = sources()

  def read(source):
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex['image']) for ex in examples]).astype(np.uint8)
    labels = np.array([ex['label'] for ex in examples], np.int32)
    return images, labels

  tr_x, tr_y = read(split_sources['train'])
  te_x, te_y = read(split_sources['test'])
  return RawImages(tr_x, tr_y, te_x, te_y, builder.info.features['label'].num_classes)
