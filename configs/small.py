"""Supernet-small on ImageNet, the paper's settings.

  python -m masktas_jax.main --config=configs/small.py --workdir=/tmp/masktas_small \
      --config.data.data_dir=/path/to/tensorflow_datasets
"""

from masktas_jax import config_lib


def get_config(arg=None):
  del arg  # This config takes no argument.
  config = config_lib.paper_config(
      # AutoFormer supernet-S: 13.0 M .. 34.7 M parameters.
      space=dict(embed_dims=(320, 384, 448), depths=(12, 13, 14),
                 num_heads=(5, 6, 7), mlp_ratios=(3.0, 3.5, 4.0)),
      # AutoFormer's default window for S.
      params_window_m=(18.0, 23.0))
  return config_lib.lock(config)
