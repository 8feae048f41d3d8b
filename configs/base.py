"""Supernet-base on ImageNet, the paper's settings.

  python -m masktas_jax.main --config=configs/base.py --workdir=/tmp/masktas_base \
      --config.data.data_dir=/path/to/tensorflow_datasets
"""

from masktas_jax import config_lib


def get_config(arg=None):
  del arg  # This config takes no argument.
  config = config_lib.paper_config('base')
  return config_lib.lock(config)
