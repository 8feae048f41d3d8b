"""The embedded default: the whole pipeline on the bundled digits, on a CPU.

  python -m masktas_jax.main --config=configs/demo.py --workdir=/tmp/masktas_demo

`:wide` is the setting where subnets really differ, for checking the search
signal (`benchmarks/fitness_quality.py`): a wider space, a supernet trained
~6x longer, and a fine-tuning budget short enough that accuracies spread.

  python -m masktas_jax.main --config=configs/demo.py:wide --workdir=/tmp/wide
"""

from masktas_jax import config_lib


def get_config(arg=None):
  if arg not in (None, '', 'wide'):
    raise ValueError(f"configs/demo.py takes no argument or 'wide', got {arg!r}")
  config = config_lib.base_config()
  # Bundled scikit-learn digits (8x8, 10 classes): no download, real labels.
  config.data.name = 'digits'
  # Digits upscaled to 32 px, patch 4: 64 patches of 48 values.
  config.space.image_size = 32
  config.space.patch_size = 4
  # Ten digit classes.
  config.space.num_classes = 10
  # A small space: 64..128 channels, 4..6 layers, 1..2 heads, ratio 2..4.
  config.space.embed_dims = (64, 96, 128)
  config.space.depths = (4, 5, 6)
  config.space.num_heads = (1, 2)
  config.space.mlp_ratios = (2.0, 3.0, 4.0)
  # Save every 200 steps, log every 20.
  config.checkpoint_every = 200
  config.log_every = 20
  # Teacher: a 4-layer, 192-wide ViT (wider than any student) with a
  # 1-block decoder.
  config.teacher.embed_dim = 192
  config.teacher.depth = 4
  config.teacher.num_heads = 3
  config.teacher.decoder_embed_dim = 128
  config.teacher.decoder_depth = 1
  config.teacher.decoder_num_heads = 2
  # Short schedules sized for a 2-core CPU, set in steps (~15 epochs here).
  config.teacher.steps = 300
  config.teacher.warmup_epochs = 1
  config.teacher.batch_size = 64
  # 75% masking keeps 16 of 64 patches (90% would keep only 6).
  config.supernet.mask_ratio = 0.75
  config.supernet.steps = 300
  config.supernet.warmup_epochs = 1
  config.supernet.batch_size = 64
  config.supernet.decoder_embed_dim = 128
  config.supernet.decoder_num_heads = 2
  # A small search: 20 candidates, 5 generations, 5 parents, in a budget of
  # 0.4-0.7 M parameters (the space spans 0.14-1.21 M).
  config.search.min_params_m = 0.4
  config.search.max_params_m = 0.7
  config.search.population = 20
  config.search.generations = 5
  config.search.parents = 5
  config.search.mutations = 10
  config.search.crossovers = 10
  # Score candidates on 512 training images.
  config.search.eval_images = 512
  config.search.batch_size = 128
  # Fine-tuning in steps, batch 128.
  config.finetune.steps = 600
  # Ours: a 2-epoch (20-step) warm-up against the new head, with
  # base_config's mean pooling. On demo.py:wide's 100-step fine-tunes the
  # two lifted inherited subnets from 31% to 74% top-1 on average.
  config.finetune.warmup_epochs = 2.0
  config.finetune.batch_size = 128
  config.finetune.lr = 2e-3
  # Digits: no flips (a mirrored 2 is no digit), milder crops, no mixing,
  # RandAugment, erasing, smoothing or drop path (a 0.7 M-parameter model
  # on 1,257 images), a mild layer decay; scored on the digits' test split.
  config.finetune.flip = False
  config.finetune.crop_min_scale = 0.5
  config.finetune.mixup = 0.0
  config.finetune.cutmix = 0.0
  config.finetune.random_erase = 0.0
  config.finetune.randaugment = 0.0
  config.finetune.label_smoothing = 0.0
  config.finetune.drop_path = 0.0
  config.finetune.layer_decay = 0.9
  config.finetune.eval_split = 'test'
  if arg == 'wide':
    _wide(config)
  return config_lib.lock(config)


def _wide(config):
  """The search-signal setting: subnets of one window that fine-tune to
  clearly different accuracies."""
  # 32..128 channels, 1..6 layers, 1..2 heads, MLP ratio 1..4: 15 k to 1.07 M
  # parameters, where the default space spans 0.14-1.21 M with depth >= 4.
  config.space.embed_dims = (32, 64, 96, 128)
  config.space.depths = (1, 2, 3, 4, 5, 6)
  config.space.num_heads = (1, 2)
  config.space.mlp_ratios = (1.0, 2.0, 3.0, 4.0)
  # A teacher trained ~50 epochs and a supernet ~100 epochs (1,257 images):
  # at the demo's 300 steps, inherited weights barely differ from random.
  config.teacher.steps = 1000
  config.supernet.steps = 2000
  config.supernet.warmup_epochs = 5
  config.checkpoint_every = 500
  config.log_every = 50
  # A window of 0.2-0.4 M parameters holds embed 64-128 at depth 1-6: wide
  # and shallow against narrow and deep.
  config.search.min_params_m = 0.2
  config.search.max_params_m = 0.4
  # mode=rank against top-1 after 100 fine-tuning steps (~10 epochs) from
  # the inherited weights: 16-72% on the validation split over 5 seeds,
  # where the full 600-step recipe puts every subnet near 98%.
  config.rank.num_archs = 30
  config.rank.yardstick = 'finetune'
  config.rank.finetune_steps = 100
