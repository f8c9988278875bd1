r"""VGG-16 on CIFAR-10 with standard BatchNorm; batch 128, SGD at LR 0.1, 15,000 steps.

Run:
  python -m bnjax.main --config=configs/vgg_bn.py --workdir=runs/vgg_bn
On the offline CIFAR-10 (JPEG) tarball, about a minute on a 2-core CPU:
  python -m bnjax.main --config=configs/vgg_bn.py:local --workdir=runs/vgg_bn_local \
    --config.dataset=imagefolder:../shared/data/cifar10-jpeg.tar.gz
"""

from bnjax import experiments


def get_config(arg=None):
  return experiments.vgg(norm='batch', arg=arg)
