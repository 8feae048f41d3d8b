"""The paper's ImageNet settings on one of AutoFormer's search spaces.

  python -m masktas_jax.main --config=configs/paper.py:small \
      --workdir=/tmp/masktas_small --config.data.data_dir=/path/to/tfds \
      --config.teacher.checkpoint=/tmp/teacher_vit_b

The teacher is the MAE authors' ViT-B converted with convert_mae (see
configs/tiny.py); `--config.teacher.pretrain=True` pre-trains one instead.

The argument is the space: `tiny`, `small` or `base` (supernet-T, -S, -B;
config_lib.AUTOFORMER_SPACES). configs/tiny.py, small.py and base.py are the
same three configs under their own names.
"""

from masktas_jax import config_lib


def get_config(arg=None):
  if arg not in config_lib.AUTOFORMER_SPACES:
    raise ValueError(
        f'configs/paper.py:SPACE takes one of '
        f'{", ".join(config_lib.AUTOFORMER_SPACES)}, got {arg!r}')
  return config_lib.lock(config_lib.paper_config(arg))
