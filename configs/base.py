"""Supernet-base on ImageNet, the paper's settings.

  python -m masktas_jax.main --config=configs/base.py --workdir=/tmp/masktas_base \
      --config.data.data_dir=/path/to/tensorflow_datasets
"""

from masktas_jax import config_lib


def get_config(arg=None):
  del arg  # This config takes no argument.
  config = config_lib.paper_config(
      # AutoFormer supernet-B: 41.6 M .. 76.8 M parameters.
      space=dict(embed_dims=(528, 576, 624), depths=(14, 15, 16),
                 num_heads=(9, 10), mlp_ratios=(3.0, 3.5, 4.0)),
      # AutoFormer's default window for B.
      params_window_m=(52.0, 54.0))
  return config_lib.lock(config)
