"""Supernet-T on ImageNet, the paper's settings: configs/paper.py:tiny.

The teacher is the MAE authors' ViT-B, as in the paper: download
mae_pretrain_vit_base.pth (README: "The teacher") and convert it once.

  python -m masktas_jax.convert_mae --checkpoint=mae_pretrain_vit_base.pth \
      --output=/tmp/teacher_vit_b
  python -m masktas_jax.main --config=configs/tiny.py --workdir=/tmp/masktas_tiny \
      --config.data.data_dir=/path/to/tensorflow_datasets \
      --config.teacher.checkpoint=/tmp/teacher_vit_b

Without a teacher checkpoint the run stops at once and says so;
`--config.teacher.pretrain=True` pre-trains one here instead (400 epochs).
What each stage needs per TPU chip or GPU, compiled from any host (the
'.[tpu]' extra; README: "Compiling for accelerators you don't have"):

  python -m masktas_jax.main --config=configs/tiny.py --workdir=/tmp/aot_tiny \
      --config.mode=compile --config.compile.topology=v5e:4x4
"""

from masktas_jax import config_lib


def get_config(arg=None):
  del arg  # This config takes no argument.
  return config_lib.lock(config_lib.paper_config('tiny'))
