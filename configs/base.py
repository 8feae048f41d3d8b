"""Supernet-B on ImageNet, the paper's settings: configs/paper.py:base.

  python -m masktas_jax.main --config=configs/base.py --workdir=/tmp/masktas_base \
      --config.data.data_dir=/path/to/tensorflow_datasets
"""

from masktas_jax import config_lib


def get_config(arg=None):
  del arg  # This config takes no argument.
  return config_lib.lock(config_lib.paper_config('base'))
