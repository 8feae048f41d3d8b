"""Shared config defaults, validation and helpers for `configs/*.py`.

Every config file starts from `base_config()`, overrides what it needs and
returns `lock(config)`: a locked ConfigDict, so a mistyped
`--config.KEY=VALUE` override fails instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from masktas_jax import settings
from masktas_jax.compilation import chips
from masktas_jax.errors import ConfigError
from masktas_jax.evaluation.signals import FITNESSES
from masktas_jax.losses import Relation, RELATION_FORMS
from masktas_jax.models.mae import MAEConfig
from masktas_jax.models.student import CLS_TARGETS, StudentConfig
from masktas_jax.models.vit import POOLS
from masktas_jax.space import ArchError, SearchSpace

COMPUTE_DTYPES = ('float32', 'bfloat16')
# mode=rank's supervised yardsticks (masktas_jax.stages.rank).
YARDSTICKS = ('knn', 'linear', 'finetune')
# finetune.head_init's choices.
HEAD_INITS = ('random', 'probe')
# data.cache_encoding's choices (masktas_jax.data.cache).
CACHE_ENCODINGS = ('raw', 'jpeg')


def base_config() -> ml_collections.ConfigDict:
  """Every field the stages read, with the paper's / AutoFormer's defaults."""
  c = ml_collections.ConfigDict()
  # Stage to run: 'pipeline' (teacher -> supernet -> search -> finetune ->
  # summary, each skipped when its output exists), one stage alone, 'space'
  # (describe the search space and exit), 'rank' (check the label-free
  # fitness against a k-NN yardstick), 'summary' (summary.json and
  # report.png from what the workdir holds), 'cache' (write the
  # pre-resized splits that data.cache reads) or 'compile' (compile every
  # stage for `compile.platform`/`compile.topology` and report its memory,
  # FLOPs and roofline; trains nothing). The list: masktas_jax.registry.
  c.mode = 'pipeline'
  # Base seed: model init, masking, Arch sampling and search derive from it.
  c.seed = 0
  # Training stages save a checkpoint every this many steps, keeping the
  # last `keep_checkpoints`, and log metrics every `log_every` steps.
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.log_every = 50
  # Trace this many steps of each training stage with jax.profiler (after
  # the first, which compiles) into <stage>/profile/, for TensorBoard's
  # profile plugin or Perfetto (the .trace.json.gz); 0: no trace.
  c.profile_steps = 0
  # JAX's persistent compilation cache in WORKDIR/jax_cache (unless
  # JAX_COMPILATION_CACHE_DIR names another): a run restarted after a
  # preemption, or the next stage of a pipeline, loads the steps it compiled
  # before instead of compiling them again (minutes for supernet-B on TPU).
  c.compilation_cache = True

  c.data = ml_collections.ConfigDict()
  # 'digits' (bundled scikit-learn digits), 'folder' (images under
  # data.data_dir), 'idx' (IDX files such as Fashion-MNIST's under
  # data.data_dir, '' = Debian's) or a tfds name such as 'imagenet2012'.
  c.data.name = 'imagenet2012'
  # tfds data_dir (local path or bucket) or the image folder; '' = default.
  c.data.data_dir = ''
  # Split used to train the teacher and the supernet (labels unused).
  c.data.train_split = 'train'
  # Held-out split for fine-tuning evaluation (top-1 / top-5).
  c.data.eval_split = 'validation'
  # Evaluation view (fine-tuning's top-1, the search's and rank's images):
  # the central crop of this fraction of the shorter side, resized to
  # space.image_size. 0.875: DeiT's and MAE's ImageNet evaluation.
  c.data.eval_crop_fraction = 0.875
  # Host input pipeline (`data.Reading`): worker processes (None: one per
  # core for image files, none for in-memory digits), threads per worker
  # or process (0: the cores shared among the workers; one for digits),
  # and batches each keeps ready. A paused pipeline holds at most
  # max(workers, 1) * (max(threads, prefetch) + 4) uint8 batches.
  c.data.threads = 0
  c.data.prefetch = 2
  c.data.workers = ml_collections.config_dict.placeholder(int)
  # A pre-resized copy of the splits to read instead of the source
  # (`data.cache`, a local folder; '' = read the source), built once by
  # --config.mode=cache: shorter side cache_short_side (0 = space.image_size
  # / data.eval_crop_fraction, 256 for 224 at 0.875), stored as 'raw' uint8
  # pixels or as 'jpeg' at cache_quality.
  c.data.cache = ''
  c.data.cache_short_side = 0
  c.data.cache_encoding = 'raw'
  c.data.cache_quality = 95

  c.space = ml_collections.ConfigDict()
  # Square input size in pixels.
  c.space.image_size = 224
  # Patch side in pixels; image_size must be a multiple of it.
  c.space.patch_size = 16
  # Input channels.
  c.space.in_chans = 3
  # Classes of the classifier head used to count subnet parameters.
  c.space.num_classes = 1000
  # Choices of the embedding width (one value for all layers).
  c.space.embed_dims = (192, 216, 240)
  # Choices of the depth (a prefix of the supernet's layers).
  c.space.depths = (12, 13, 14)
  # Choices of heads per layer (head dim 64).
  c.space.num_heads = (3, 4)
  # Choices of the MLP ratio per layer (MLP width = int(embed * ratio)).
  c.space.mlp_ratios = (3.5, 4.0)

  c.teacher = ml_collections.ConfigDict()
  # Converted or trained teacher checkpoint dir; '' = pre-train one here,
  # when `pretrain` allows it.
  c.teacher.checkpoint = ''
  # Without a checkpoint, pre-train a MAE here (the demo does). The paper
  # configs set False: the paper distils from the MAE authors' ViT-B, and
  # pre-training one on ImageNet takes 400 epochs.
  c.teacher.pretrain = True
  # Teacher encoder width (MAE ViT-B: 768).
  c.teacher.embed_dim = 768
  # Teacher encoder depth.
  c.teacher.depth = 12
  # Teacher encoder heads (head dim 64).
  c.teacher.num_heads = 12
  # Teacher decoder width, depth and heads (MAE: 512, 8, 16).
  c.teacher.decoder_embed_dim = 512
  c.teacher.decoder_depth = 8
  c.teacher.decoder_num_heads = 16
  # MAE pre-training mask ratio.
  c.teacher.mask_ratio = 0.75
  # Normalise each target patch (mean, variance) in the pixel loss.
  c.teacher.norm_pix_loss = True
  # Pre-training length in epochs; steps > 0 overrides it.
  c.teacher.epochs = 400
  c.teacher.steps = 0
  # Warm-up epochs of the cosine schedule.
  c.teacher.warmup_epochs = 40.0
  # Global batch size.
  c.teacher.batch_size = 4096
  # Learning rate per 256 images (MAE: 1.5e-4).
  c.teacher.base_lr = 1.5e-4
  # AdamW weight decay (none on biases and norms).
  c.teacher.weight_decay = 0.05
  # Rematerialise each MAE block in pre-training's backward pass: a
  # fraction of the activation memory for one more forward of the blocks
  # (XLA counts 23% more FLOPs for ViT-B). The paper's batch of 4,096
  # needs it on 4 chips (BENCHMARKS).
  c.teacher.remat = False

  c.supernet = ml_collections.ConfigDict()
  # Mask ratio of supernet training (paper: 90%).
  c.supernet.mask_ratio = 0.9
  # Training length in epochs (paper: 100); steps > 0 overrides it.
  c.supernet.epochs = 100
  c.supernet.steps = 0
  # Warm-up epochs of the cosine schedule (paper: 20).
  c.supernet.warmup_epochs = 20.0
  # Global batch size, in masked views.
  c.supernet.batch_size = 1024
  # Masked views per decoded image (ours): each image the input pipeline
  # decodes and crops is masked this many times, independently, inside the
  # batch (batch_size / views_per_image images a step), so the host decodes
  # that many times less. Epochs, warm-up and the learning rate count
  # views, so K changes what the host decodes, not the schedule (an epoch
  # reads each image 1/K times, as DeiT's repeated augmentation does).
  c.supernet.views_per_image = 1
  # With views_per_image > 1 (ours): each view also mirrored by a coin of
  # its own on the device, on top of the host's flip of its image, so the
  # views of one image differ in orientation as well as in their masks.
  c.supernet.view_flips = False
  # Learning rate per 512 masked views (AutoFormer: 5e-4 per 512 images,
  # for 100 ImageNet epochs). Short schedules need more: configs/fashion.py
  # trains 1,500 steps at 16x (BENCHMARKS.md, "The supernet's learning
  # rate").
  c.supernet.base_lr = 5e-4
  # AdamW weight decay (paper: 0.05; none on biases and norms).
  c.supernet.weight_decay = 0.05
  # Weight of the feature-prediction term against pixel regression.
  c.supernet.beta = 1.0
  # What the CLS output learns to predict, its feature loss added with the
  # weight beta (models.student.CLS_TARGETS): 'none' (the paper), the
  # teacher's CLS output or the mean of its visible patch tokens (ours, so
  # that a classifier reading CLS starts from a trained token).
  c.supernet.cls_target = 'none'
  # Student decoder: 2 blocks (paper), width and heads.
  c.supernet.decoder_depth = 2
  c.supernet.decoder_embed_dim = 512
  c.supernet.decoder_num_heads = 16
  # Rematerialise supernet layers in the backward pass (faster on CPU).
  c.supernet.remat = True
  # Clip gradients to this global norm; 0 = no clipping.
  c.supernet.grad_clip = 0.0
  # Algorithm 1, line 9: update only the sampled subnet's weights (AdamW's
  # momentum and decay would otherwise move the rest too).
  c.supernet.freeze_inactive = True
  # Dtype of the step's arithmetic: 'float32', or 'bfloat16' for
  # accelerators (weights, optimizer state and the losses stay float32).
  c.supernet.compute_dtype = 'float32'

  c.search = ml_collections.ConfigDict()
  # Candidates per generation (paper / AutoFormer: 50).
  c.search.population = 50
  # Generations (paper: 20).
  c.search.generations = 20
  # Top-k parents kept across generations (AutoFormer: 10).
  c.search.parents = 10
  # Children per generation by mutation and by crossover (AutoFormer: 25).
  c.search.mutations = 25
  c.search.crossovers = 25
  # Mutation probabilities: each layer (P_m), depth (P_d), embed dim.
  c.search.layer_mutation_prob = 0.2
  c.search.depth_mutation_prob = 0.4
  c.search.embed_mutation_prob = 0.4
  # Parameter window in millions; 0 = unbounded on that side.
  c.search.min_params_m = 0.0
  c.search.max_params_m = 0.0
  # MAC window in billions (the papers' "FLOPs"); 0 = unbounded.
  c.search.min_gmacs = 0.0
  c.search.max_gmacs = 0.0
  # Relation maps of the fitness (eq. 13-16): how two tokens' relation is
  # measured (losses.RELATION_FORMS), the temperature of the teacher's and
  # of the student's softmax, and whether each token's relation to itself
  # is left out. Chosen by benchmarks/fitness_quality.py on two seeds of
  # configs/demo.py:wide, as the best of 126 settings against fine-tuned
  # top-1 among those whose ranking depends on the teacher; on held-out
  # seeds it did not track accuracy (BENCHMARKS.md).
  c.search.relation = 'centered_cosine'
  # What rates a candidate (masktas_jax.evaluation.signals): 'relation'
  # (the relation consistency above, eq. 13-16), 'relation_paper' (its
  # literal form: raw dot products, self-relations kept), 'relation_all' (on every patch,
  # none masked), 'feature' (minus eq. 11's feature-prediction loss),
  # 'pixel' (minus eq. 10's reconstruction loss) or 'fusion' (the mean of
  # the relation and pixel z-scores among random window subnets). All
  # but 'relation' are ours; mode=rank reports every one.
  c.search.fitness = 'relation'
  c.search.tau = 0.1
  # The student's temperature is search.tau times this.
  c.search.student_tau_ratio = 1.0
  c.search.exclude_self = True
  # Images that score each candidate, from `eval_split` ('' = the training
  # split; never the test split), masked like supernet training.
  c.search.eval_images = 10_000
  c.search.eval_split = ''
  # Images per scoring call (global; must divide by the device count).
  c.search.batch_size = 256
  # How a call scores the population: 'vmap' (max-width masks, vmapped:
  # accelerators), 'map' (each at its subnet's FLOPs, in sequence: CPUs) or
  # 'auto' (by backend).
  c.search.scoring = 'auto'
  # Trained supernet to search ('' = the one mode=supernet wrote in the
  # workdir; e.g. another run's `supernet/model` to search a new domain).
  c.search.supernet = ''

  c.rank = ml_collections.ConfigDict()
  # mode=rank: random subnets of the search window scored by the label-free
  # fitness and by a supervised yardstick on their inherited weights (needs
  # labels): 'knn' (k-NN top-1 of frozen features), 'linear' (a linear
  # probe on them) or 'finetune' (top-1 after `finetune_steps` steps of the
  # fine-tuning recipe, one subnet after another: the costly one).
  c.rank.num_archs = 50
  c.rank.yardstick = 'knn'
  c.rank.knn_k = 20
  c.rank.finetune_steps = 500
  # Labelled support images (training split) and queries (data.eval_split).
  c.rank.train_images = 10_000
  c.rank.eval_images = 5_000

  c.finetune = ml_collections.ConfigDict()
  # The paper gives AdamW, weight decay, epochs, batch, lr and drop path
  # ("paper:" below); the rest is DeiT's and MAE's fine-tuning convention,
  # which the paper does not state ("beyond the paper:").
  # Arch JSON to fine-tune; '' = the search's best_arch.json.
  c.finetune.arch = ''
  # Fine-tuning length in epochs (paper: 100); steps > 0 overrides it.
  c.finetune.epochs = 100
  c.finetune.steps = 0
  # Global batch size (paper: 2048).
  c.finetune.batch_size = 2048
  # Peak learning rate (paper: 5e-3).
  c.finetune.lr = 5e-3
  # Warm-up epochs (beyond the paper: DeiT's and MAE's 5).
  c.finetune.warmup_epochs = 5.0
  # AdamW weight decay (paper: 0.05).
  c.finetune.weight_decay = 0.05
  # Drop-path rate (paper: 0.1).
  c.finetune.drop_path = 0.1
  # Layer-wise lr decay: layer l of L gets lr * layer_decay ** (L + 1 - l)
  # (1.0: none; beyond the paper: MAE's ViT-B fine-tuning uses 0.65-0.75).
  c.finetune.layer_decay = 0.75
  # Label smoothing, and mixup / cutmix alphas (0: off; beyond the paper:
  # DeiT's 0.1, 0.8 / 1.0).
  c.finetune.label_smoothing = 0.1
  c.finetune.mixup = 0.8
  c.finetune.cutmix = 1.0
  # Training crops: random resized crop of at least this area, and flips
  # (beyond the paper: DeiT's 0.08 and flips).
  c.finetune.crop_min_scale = 0.08
  c.finetune.flip = True
  # RandAugment's magnitude (0..10, 0: off) and its per-operation spread
  # (beyond the paper: DeiT's rand-m9-mstd0.5-inc1, two operations per image).
  c.finetune.randaugment = 9.0
  c.finetune.randaugment_std = 0.5
  # Probability of random erasing per image (0: off; beyond the paper:
  # DeiT's 0.25, one box of 2-33% of the image filled with noise).
  c.finetune.random_erase = 0.25
  # Decay of an exponential moving average of the weights, exported and
  # evaluated instead of the last weights (0: off; beyond the paper: DeiT
  # offers 0.99996, for ~375k steps).
  c.finetune.ema = 0.0
  # Split for top-1 / top-5 ('' = data.eval_split).
  c.finetune.eval_split = ''
  # Train the same Arch from random weights instead (what inheriting buys).
  c.finetune.from_scratch = False
  # Classifier input: 'mean' (the mean of the final-normed patch tokens:
  # AutoFormer's --gp; MAE's fine-tuning pools too, normalising after) or
  # 'cls' (the CLS token: DeiT, and the paper, which says nothing else).
  # Ours: 'mean', as supernet training scores the patch tokens, and the
  # CLS output only under supernet.cls_target (models.student.scored_pools):
  # on demo.py:wide's
  # 100-step fine-tunes, 'mean' added 34 points of top-1 to inherited
  # subnets (10 of 10).
  c.finetune.pool = 'mean'
  # The new head: 'random' (the paper) or 'probe' (LP-FT, ours): a linear
  # probe fitted on the inherited encoder's features of
  # `probe_images` training images, behind a fixed (non-affine)
  # standardisation of those features that stays for the fine-tuning (a
  # probe of raw features has weights too large to fine-tune from).
  c.finetune.head_init = 'random'
  c.finetune.probe_images = 10000
  # Dtype of the train step's arithmetic: 'float32', or 'bfloat16' for
  # accelerators (mixed precision, as DeiT's and MAE's fine-tuning;
  # weights, optimizer state and the loss stay float32; evaluation runs in
  # float32). Not for CPUs: on this project's AMX host, bf16 matmuls alone
  # ran 4-5x float32's, but the whole Fashion fine-tuning step ran at 223
  # against 260 images/s (one thread), the casts outweighing them.
  c.finetune.compute_dtype = 'float32'

  c.compile = ml_collections.ConfigDict()
  # mode=compile: compile every stage's step ahead of time for an
  # accelerator this host need not have, and report memory per device,
  # FLOPs, a roofline and compile times (masktas_jax.stages.compile).
  # Platform: 'tpu' (needs the '.[tpu]' extra) or 'cuda' (the '.[cuda]'
  # extra).
  c.compile.platform = 'tpu'
  # TPU: GEN:AxB[xC] in chips (v5e:4x4, v5p:2x2x1, v6e:2x2); cuda:
  # COUNTxCHIP (8xh100).
  c.compile.topology = 'v5e:2x2'
  # Stages whose programs to compile (each at its config batch size); empty:
  # the ones this config runs (MAE pre-training only with
  # teacher.pretrain=True and no teacher.checkpoint).
  c.compile.stages = ()
  return c


# AutoFormer's supernets: (space, default parameter window in millions).
AUTOFORMER_SPACES = {
    # Supernet-T: 5.3 M .. 10.4 M parameters; the window is around
    # AutoFormer-T / MaskTAS-tiny (5.8 M).
    'tiny': (dict(embed_dims=(192, 216, 240), depths=(12, 13, 14),
                  num_heads=(3, 4), mlp_ratios=(3.5, 4.0)), (5.3, 6.0)),
    # Supernet-S: 13.0 M .. 34.7 M; AutoFormer's default window for S.
    'small': (dict(embed_dims=(320, 384, 448), depths=(12, 13, 14),
                   num_heads=(5, 6, 7), mlp_ratios=(3.0, 3.5, 4.0)),
              (18.0, 23.0)),
    # Supernet-B: 41.6 M .. 76.8 M; AutoFormer's default window for B.
    'base': (dict(embed_dims=(528, 576, 624), depths=(14, 15, 16),
                  num_heads=(9, 10), mlp_ratios=(3.0, 3.5, 4.0)),
             (52.0, 54.0)),
}


def paper_config(name: str) -> ml_collections.ConfigDict:
  """The paper's ImageNet recipe on AutoFormer's `name` search space
  ('tiny', 'small' or 'base'), with its default parameter window (our
  count: no relative-position tables)."""
  space, params_window_m = AUTOFORMER_SPACES[name]
  config = base_config()
  # Unlabelled ImageNet-1k via tfds (prepared once with TensorFlow).
  config.data.name = 'imagenet2012'
  # 224 px, patch 16: 196 patches.
  config.space.image_size = 224
  config.space.patch_size = 16
  # ImageNet-1k classes for the head of the counted subnet.
  config.space.num_classes = 1000
  # The AutoFormer space.
  for key, value in space.items():
    config.space[key] = value
  # Paper: the teacher is the released MAE ViT-B, converted
  # (convert_mae) and given as teacher.checkpoint; not pre-trained here.
  config.teacher.pretrain = False
  # Paper: mask 90%, 100 epochs with 20 warm-up, AdamW with wd 0.05.
  config.supernet.mask_ratio = 0.9
  config.supernet.epochs = 100
  config.supernet.warmup_epochs = 20.0
  config.supernet.weight_decay = 0.05
  # Ours: each decoded image masked 4 times in the batch, so a host decodes
  # 4x fewer ImageNet JPEGs for the same steps (at 40% MFU the 1-view
  # input needs more cores than v5p, v6e and 8x H100 hosts have;
  # BENCHMARKS.md, #28). On Fashion-MNIST over 2 seeds it found the same
  # Arch as 1 view, test top-1 +0.16 +- 0.16 points, held-out feature loss
  # 1-3% higher at the same steps.
  config.supernet.views_per_image = 4
  # Paper: population 50, 20 generations.
  config.search.population = 50
  config.search.generations = 20
  config.search.min_params_m, config.search.max_params_m = params_window_m
  return config


def load_config(spec: str, *, check: bool = True,
                **overrides: Any) -> ml_collections.ConfigDict:
  """The config of `spec` ('configs/demo.py' or 'configs/demo.py:wide', as
  --config takes it) with `overrides` given as **{'search.tau': 0.2, ...}
  (dotted keys as in --config.KEY=VALUE); validated unless `check` is
  False (for tests that build a config in steps)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    target = config
    for part in section.split('.') if section else ():
      target = target[part]
    target[name] = value
  return validate(config) if check else config


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config


def space_from_config(config: ml_collections.ConfigDict) -> SearchSpace:
  """The SearchSpace of `config.space`; errors name the config field."""
  s = config.space
  try:
    return SearchSpace(
        embed_dims=tuple(s.embed_dims), depths=tuple(s.depths),
        num_heads=tuple(s.num_heads), mlp_ratios=tuple(s.mlp_ratios),
        image_size=s.image_size, patch_size=s.patch_size,
        num_classes=s.num_classes, in_chans=s.in_chans)
  except (ArchError, TypeError) as e:
    raise ConfigError(str(e).replace('SearchSpace.', 'config.space.')) from e


def mae_config(config: ml_collections.ConfigDict) -> MAEConfig:
  """The MAEConfig that `config.teacher` and `config.space` describe."""
  t, s = config.teacher, config.space
  return MAEConfig(
      image_size=s.image_size, patch_size=s.patch_size, in_chans=s.in_chans,
      embed_dim=t.embed_dim, depth=t.depth, num_heads=t.num_heads,
      decoder_embed_dim=t.decoder_embed_dim, decoder_depth=t.decoder_depth,
      decoder_num_heads=t.decoder_num_heads, norm_pix_loss=t.norm_pix_loss)


def student_config(config: ml_collections.ConfigDict,
                   teacher_dim: int) -> StudentConfig:
  """The StudentConfig of `config.space` and `config.supernet`'s decoder,
  distilling a teacher of width `teacher_dim`."""
  s = config.supernet
  return StudentConfig(
      space=space_from_config(config), teacher_dim=teacher_dim,
      decoder_embed_dim=s.decoder_embed_dim, decoder_depth=s.decoder_depth,
      decoder_num_heads=s.decoder_num_heads)


def relation_from_config(search_config: ml_collections.ConfigDict
                         ) -> Relation:
  """The `losses.Relation` of `config.search`."""
  s = search_config
  return Relation(form=s.relation, tau=s.tau,
                  student_tau=s.tau * s.student_tau_ratio,
                  exclude_self=s.exclude_self)


def scoring(config: ml_collections.ConfigDict) -> settings.Scoring:
  """How the search scores candidates: `config.search`'s images, fitness
  and relation, the supernet's mask ratio, the teacher's pixel target."""
  s = config.search
  return settings.Scoring(
      data=config.data, space=space_from_config(config),
      split=s.eval_split or config.data.train_split, images=s.eval_images,
      batch_size=s.batch_size, mask_ratio=config.supernet.mask_ratio,
      relation=relation_from_config(s), fitness=s.fitness,
      strategy=s.scoring, norm_pix=config.teacher.norm_pix_loss,
      seed=config.seed, teacher=config.teacher.checkpoint,
      supernet=s.supernet)


def finetune_setup(config: ml_collections.ConfigDict
                   ) -> settings.FinetuneSetup:
  """What fine-tuning reads of a run: `config.finetune`'s recipe, the
  data, the space, the seed, the supernet and the loop's settings."""
  return settings.FinetuneSetup(
      recipe=config.finetune, data=config.data,
      space=space_from_config(config), seed=config.seed,
      supernet=config.search.supernet, loop=loop_settings(config))


def loop_settings(config: ml_collections.ConfigDict) -> dict[str, int]:
  """The run-wide logging, checkpoint and profiling settings, as
  `trainer.LoopConfig`'s keywords."""
  return {k: config[k] for k in ('checkpoint_every', 'keep_checkpoints',
                                 'log_every', 'profile_steps')}


def _check(ok: bool, field: str, message: str, value: Any) -> None:
  if not ok:
    raise ConfigError(f'config.{field}: {message}, got {value!r}')


# Fields whose None means "derived at run time", not "required".
_DERIVED = ('data.workers',)


def _unset(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Dotted names of the required fields left None
  (`config_dict.placeholder`)."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names += _unset(value, f'{prefix}{key}.')
    elif value is None and prefix + key not in _DERIVED:
      names.append(prefix + key)
  return names


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError naming the first field that cannot work."""
  unset = _unset(config)
  if unset:
    # A config marks what it cannot guess (a path to an existing model)
    # with a placeholder.
    raise ConfigError(
        ', '.join(f'config.{u}' for u in unset) + ': this config needs '
        + ('them; set ' if len(unset) > 1 else 'it; set ')
        + ' '.join(f'--config.{u}=...' for u in unset))
  _check(bool(config.data.name), 'data.name', 'must not be empty',
         config.data.name)
  for field in ('checkpoint_every', 'keep_checkpoints', 'log_every'):
    _check(config[field] > 0, field, 'must be positive', config[field])
  _check(config.profile_steps >= 0, 'profile_steps', 'must be >= 0',
         config.profile_steps)
  workers = config.data.get('workers')
  _check(workers is None or workers >= 0, 'data.workers', 'must be >= 0 '
         '(0: no worker processes; None: derived from the cores, the memory '
         'and the source)', workers)
  _check(config.data.threads >= 0, 'data.threads', 'must be >= 0 (0: the '
         'CPU cores shared among the workers)', config.data.threads)
  _check(0 < config.data.eval_crop_fraction <= 1, 'data.eval_crop_fraction',
         'expected 0 < fraction <= 1', config.data.eval_crop_fraction)
  _check(config.data.prefetch >= 1, 'data.prefetch', 'must be >= 1',
         config.data.prefetch)
  side = config.data.cache_short_side
  _check(side == 0 or side >= config.space.image_size,
         'data.cache_short_side', f'expected 0 (space.image_size / '
         f'data.eval_crop_fraction) or >= space.image_size '
         f'({config.space.image_size})', side)
  _check('://' not in config.data.cache, 'data.cache', 'must be a local '
         'folder (the cache is written and read with local file calls)',
         config.data.cache)
  _check(config.data.cache_encoding in CACHE_ENCODINGS, 'data.cache_encoding',
         f'expected one of {CACHE_ENCODINGS}', config.data.cache_encoding)
  _check(1 <= config.data.cache_quality <= 100, 'data.cache_quality',
         'expected 1..100', config.data.cache_quality)
  space_from_config(config)
  for stage in ('teacher', 'supernet'):
    ratio = config[stage].mask_ratio
    _check(0 < ratio < 1, f'{stage}.mask_ratio', 'expected 0 < ratio < 1',
           ratio)
  for stage in ('teacher', 'supernet', 'finetune'):
    sec = config[stage]
    for field in ('epochs', 'steps', 'warmup_epochs'):
      _check(sec[field] >= 0, f'{stage}.{field}', 'must be >= 0', sec[field])
    _check(sec.batch_size > 0, f'{stage}.batch_size', 'must be positive',
           sec.batch_size)
    _check(sec.epochs > 0 or sec.steps > 0, f'{stage}.steps',
           'epochs and steps are both 0: nothing to train', sec.steps)
  _check(config.supernet.grad_clip >= 0, 'supernet.grad_clip', 'must be >= 0',
         config.supernet.grad_clip)
  _check(config.supernet.beta >= 0, 'supernet.beta', 'must be >= 0',
         config.supernet.beta)
  views = config.supernet.views_per_image
  _check(isinstance(views, int) and views >= 1, 'supernet.views_per_image',
         'expected an integer >= 1', views)
  _check(config.supernet.batch_size % views == 0, 'supernet.views_per_image',
         f'must divide supernet.batch_size ({config.supernet.batch_size})',
         views)
  _check(config.supernet.cls_target in CLS_TARGETS,
         'supernet.cls_target', f'expected one of {CLS_TARGETS}',
         config.supernet.cls_target)
  _check(config.supernet.compute_dtype in COMPUTE_DTYPES,
         'supernet.compute_dtype', f'expected one of {COMPUTE_DTYPES}',
         config.supernet.compute_dtype)
  t = config.teacher
  _check(t.embed_dim == t.num_heads * 64, 'teacher.num_heads',
         f'embed_dim {t.embed_dim} must equal num_heads * 64', t.num_heads)
  s = config.search
  for field in ('population', 'generations', 'parents', 'eval_images',
                'batch_size'):
    _check(s[field] > 0, f'search.{field}', 'must be positive', s[field])
  _check(s.parents <= s.population, 'search.parents',
         f'cannot exceed search.population ({s.population})', s.parents)
  for field in ('layer_mutation_prob', 'depth_mutation_prob',
                'embed_mutation_prob'):
    _check(0 <= s[field] <= 1, f'search.{field}', 'expected a probability',
           s[field])
  for lo, hi in (('min_params_m', 'max_params_m'), ('min_gmacs', 'max_gmacs')):
    _check(s[lo] >= 0, f'search.{lo}', 'must be >= 0', s[lo])
    _check(s[hi] == 0 or s[hi] >= s[lo], f'search.{hi}',
           f'must be 0 (unbounded) or >= search.{lo} ({s[lo]})', s[hi])
  for field in ('tau', 'student_tau_ratio'):
    _check(s[field] > 0, f'search.{field}', 'must be positive', s[field])
  _check(s.fitness in FITNESSES, 'search.fitness',
         f'expected one of {FITNESSES}', s.fitness)
  _check(s.relation in RELATION_FORMS, 'search.relation',
         f'expected one of {RELATION_FORMS}', s.relation)
  strategies = ('auto',) + settings.SCORING_STRATEGIES
  _check(s.scoring in strategies, 'search.scoring',
         f'expected one of {strategies}', s.scoring)
  _check(not s.eval_split.startswith('test'), 'search.eval_split',
         'the search never looks at the test split', s.eval_split)
  _check(config.rank.yardstick in YARDSTICKS, 'rank.yardstick',
         f'expected one of {YARDSTICKS}', config.rank.yardstick)
  for field in ('num_archs', 'knn_k', 'finetune_steps', 'train_images',
                'eval_images'):
    _check(config.rank[field] > 0, f'rank.{field}', 'must be positive',
           config.rank[field])
  f = config.finetune
  _check(f.lr > 0, 'finetune.lr', 'must be positive', f.lr)
  _check(f.weight_decay >= 0, 'finetune.weight_decay', 'must be >= 0',
         f.weight_decay)
  _check(0 <= f.drop_path < 1, 'finetune.drop_path', 'expected 0 <= rate < 1',
         f.drop_path)
  _check(0 < f.layer_decay <= 1, 'finetune.layer_decay',
         'expected 0 < decay <= 1', f.layer_decay)
  _check(0 <= f.label_smoothing < 1, 'finetune.label_smoothing',
         'expected 0 <= value < 1', f.label_smoothing)
  for field in ('mixup', 'cutmix'):
    _check(f[field] >= 0, f'finetune.{field}', 'must be >= 0 (0: off)',
           f[field])
  _check(0 < f.crop_min_scale <= 1, 'finetune.crop_min_scale',
         'expected 0 < scale <= 1', f.crop_min_scale)
  _check(0 <= f.random_erase <= 1, 'finetune.random_erase',
         'expected a probability, 0 <= p <= 1', f.random_erase)
  _check(0 <= f.randaugment <= 10, 'finetune.randaugment',
         'expected a magnitude 0..10 (0: off)', f.randaugment)
  _check(0 <= f.randaugment_std < float('inf'), 'finetune.randaugment_std',
         'must be finite and >= 0', f.randaugment_std)
  _check(0 <= f.ema < 1, 'finetune.ema', 'expected 0 <= decay < 1 (0: off)',
         f.ema)
  _check(f.pool in POOLS, 'finetune.pool', f'expected one of {POOLS}',
         f.pool)
  _check(f.head_init in HEAD_INITS, 'finetune.head_init',
         f'expected one of {HEAD_INITS}', f.head_init)
  _check(not (f.head_init == 'probe' and f.from_scratch),
         'finetune.head_init', "'probe' needs inherited weights "
         '(finetune.from_scratch=False)', f.head_init)
  _check(f.compute_dtype in COMPUTE_DTYPES, 'finetune.compute_dtype',
         f'expected one of {COMPUTE_DTYPES}', f.compute_dtype)
  _check(f.probe_images >= 1, 'finetune.probe_images', 'must be >= 1',
         f.probe_images)
  chips.parse_target(config.compile.platform, config.compile.topology)
  return config
