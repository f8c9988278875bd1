"""A tiny tfds image dataset (3 classes, 32x32) defined in code, for the real-tfds test.

  python tests/tfds_tiny.py DATA_DIR WORKDIR

registers the builder, then trains a few steps of vgg_tiny on ``tfds:tiny_cifar`` with
``data.tfds_data_dir=DATA_DIR``: on an empty DATA_DIR the run prepares the dataset itself
(TensorFlow installed), as on a fresh host.
"""

import sys

import numpy as np
import tensorflow_datasets as tfds


class TinyCifar(tfds.core.GeneratorBasedBuilder):
  """48 training and 24 test images whose mean colour depends on the class."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(32, 32, 3)),
          'label': tfds.features.ClassLabel(num_classes=3),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(48, 0), 'test': self._generate_examples(24, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      image = np.clip(rng.normal(60 + 60 * (i % 3), 30, (32, 32, 3)), 0, 255).astype(np.uint8)
      yield i, {'image': image, 'label': i % 3}


def tiny_config(data_dir: str):
  from bnjax import config_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.vgg('batch', 'local')
  c.update(
    model='vgg_tiny',
    dataset='tfds:tiny_cifar',
    batch_size=16,
    eval_batch_size=16,
    num_steps=3,
    eval_every=0,
    checkpoint_every=0,
  )
  c.data.tfds_data_dir = data_dir
  for probe in c.probes.values():
    probe.every = 0
  return c


if __name__ == '__main__':
  from bnjax import train  # pylint: disable=g-import-not-at-top

  assert train.train_and_evaluate(tiny_config(sys.argv[1]), sys.argv[2]) == 'done'
