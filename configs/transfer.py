"""Transfer (paper Table 2): an ImageNet supernet searched on another
dataset's unlabelled images, then the found subnet fine-tuned on it.

  python -m masktas_jax.main --config=configs/transfer.py:cifar10 \
      --workdir=/tmp/masktas_cifar10 \
      --config.data.data_dir=/path/to/tensorflow_datasets \
      --config.teacher.checkpoint=/path/to/imagenet_run/teacher/model \
      --config.search.supernet=/path/to/imagenet_run/supernet/model

The argument is the tfds dataset: cifar10, cifar100, oxford_iiit_pet or
oxford_flowers102 (prepared once with `tfds build NAME
--file_format=array_record`), optionally followed by the AutoFormer space of
the supernet: `cifar100,tiny` (default: small, as in Table 2). The teacher
and the supernet are the ones an ImageNet run wrote (its `teacher/model` and
`supernet/model`); the pipeline skips training them and runs search ->
finetune -> summary.
"""

from ml_collections import config_dict

from masktas_jax import config_lib

# tfds name -> (classes, training split, evaluation split, fine-tuning
# epochs). Small datasets get more epochs, so every fine-tuning runs a few
# thousand steps at batch 512.
DATASETS = {
    'cifar10': (10, 'train', 'test', 100),
    'cifar100': (100, 'train', 'test', 100),
    'oxford_iiit_pet': (37, 'train', 'test', 300),
    # Flowers' train and validation splits hold 10 images per class each.
    'oxford_flowers102': (102, 'train+validation', 'test', 500),
}


def get_config(arg=None):
  name, _, space = (arg or '').partition(',')
  if name not in DATASETS:
    raise ValueError(f'configs/transfer.py:DATASET: expected one of '
                     f'{", ".join(DATASETS)}, got {name!r}')
  space = space or 'small'
  if space not in config_lib.AUTOFORMER_SPACES:
    raise ValueError(f'configs/transfer.py:{name},SPACE: expected one of '
                     f'{", ".join(config_lib.AUTOFORMER_SPACES)}, got '
                     f'{space!r}')
  num_classes, train_split, eval_split, epochs = DATASETS[name]
  config = config_lib.paper_config(space)
  config.data.name = name
  config.data.train_split = train_split
  config.data.eval_split = eval_split
  # The target's classes: they size the head of the counted subnet, so the
  # parameter window applies to the classifier that is fine-tuned.
  config.space.num_classes = num_classes
  # Both come from the ImageNet run: nothing sensible to default to.
  config.teacher.checkpoint = config_dict.placeholder(str)
  config.search.supernet = config_dict.placeholder(str)
  # Score candidates on (up to) 10k of the target's training images.
  config.search.eval_images = 10_000
  # Fine-tuning from the inherited ImageNet weights: batch 512, a lower peak
  # lr than from-scratch ImageNet, DeiT's regularisation.
  config.finetune.batch_size = 512
  config.finetune.lr = 5e-4
  config.finetune.epochs = epochs
  config.finetune.warmup_epochs = 5
  return config_lib.lock(config)
