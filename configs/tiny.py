"""Supernet-tiny on ImageNet, the paper's settings.

  python -m masktas_jax.main --config=configs/tiny.py --workdir=/tmp/masktas_tiny \
      --config.data.data_dir=/path/to/tensorflow_datasets
"""

from masktas_jax import config_lib


def get_config(arg=None):
  del arg  # This config takes no argument.
  config = config_lib.paper_config(
      # AutoFormer supernet-T: 5.3 M .. 10.4 M parameters.
      space=dict(embed_dims=(192, 216, 240), depths=(12, 13, 14),
                 num_heads=(3, 4), mlp_ratios=(3.5, 4.0)),
      # Around AutoFormer-T / MaskTAS-tiny (5.8 M).
      params_window_m=(5.3, 6.0))
  return config_lib.lock(config)
