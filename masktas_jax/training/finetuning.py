"""Fine-tuning a subnet as a classifier, and evaluating it: the library
behind mode=finetune and rank's 'finetune' yardstick.

The Arch is extracted from the trained supernet into a dense
`VisionTransformer` (or built at random, `finetune.from_scratch`), a new
head is added, and the whole network is fine-tuned with labels: AdamW with
warm-up + cosine, layer-wise learning-rate decay, drop path, label
smoothing and optional mixup/cutmix. Then top-1 / top-5 on the held-out
split.

`fine_tune(setup, workdir, arch)` (`setup`: `config_lib.finetune_setup`)
writes `workdir/finetune/checkpoints`
(resume), `metrics.jsonl`, `loss.png`, `metrics.json` (the evaluation) and
`model/`, the classifier alone: `model_dirs.load_classifier(path)` gives it
back for inference without any supernet code.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

import jax
import numpy as np
import jax.numpy as jnp
import optax
from etils import epath
from flax import nnx

from masktas_jax import data, parallel, settings
from masktas_jax.errors import FinetuneError
from masktas_jax.evaluation import evaluator, probe as probe_lib
from masktas_jax.models import vit
from masktas_jax.space import Arch, SearchSpace
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import batch_augment, tensorboard, trainer


def build_classifier(space: SearchSpace, arch: Arch, num_classes: int,
                     drop_path: float, rngs: nnx.Rngs,
                     pool: str = 'cls',
                     standardize: bool = False) -> vit.VisionTransformer:
  return vit.VisionTransformer(
      embed_dim=arch.embed_dim, num_heads=arch.num_heads,
      mlp_dims=arch.mlp_dims, image_size=space.image_size,
      patch_size=space.patch_size, num_classes=num_classes,
      in_chans=space.in_chans, rngs=rngs, drop_path_rate=drop_path,
      pool=pool, standardize=standardize)


def initial_weights(classifier: vit.VisionTransformer,
                    inherited: dict | None,
                    probe: dict | None = None) -> tuple[dict, dict]:
  """(params, other variables) of `classifier` as pure dicts, every weight
  but the head replaced by `inherited` (an extracted encoder's parameters),
  when given; with `probe` (`probe.fit_linear_probe`'s), the head and the
  standardisation in front of it (a `standardize` classifier) set from it.
  """
  _, params, rest = nnx.split(classifier, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  if inherited is not None:
    params.update({k: v for k, v in inherited.items()
                   if k in params and k != 'head'})
  if probe is not None:
    params['head'] = {'kernel': probe['kernel'], 'bias': probe['bias']}
    rest.update(feature_mean=probe['mean'], feature_scale=probe['scale'])
  return params, rest


def fold_standardization(params: dict, fixed: dict) -> tuple[dict, dict]:
  """A `standardize` classifier's (params, other variables) as a plain
  classifier's computing the same logits: the head reads
  (f - mean) * scale, so kernel' = scale[:, None] * kernel and
  bias' = bias - (mean * scale) @ kernel."""
  fixed = dict(fixed)
  mean, scale = fixed.pop('feature_mean'), fixed.pop('feature_scale')
  kernel, bias = params['head']['kernel'], params['head']['bias']
  head = {'kernel': scale[:, None] * kernel,
          'bias': bias - (mean * scale) @ kernel}
  return {**params, 'head': head}, fixed


def pooled_features(classifier: vit.VisionTransformer,
                    batches) -> tuple[np.ndarray, np.ndarray]:
  """What `classifier`'s head reads ((n, D) float32) and the labels (n,) of
  every valid image of `batches` (uint8 batches, normalised on device)."""
  graphdef, state = nnx.split(classifier)

  def features(state, batch, _):
    return (nnx.merge(graphdef, state).features(batch['image']),
            batch['label'], batch['valid'])

  run = evaluator.Evaluator(features)
  placed, feats, labels = run.place(state), [], []
  for out in run.map(batches, placed):
    f, label, valid = jax.device_get(out)
    feats.append(np.asarray(f, np.float32)[valid])
    labels.append(np.asarray(label)[valid])
  return np.concatenate(feats), np.concatenate(labels)


def fit_head(recipe, data_config, space: SearchSpace, arch: Arch,
             num_classes: int, inherited: dict, seed: int
             ) -> dict[str, jax.Array]:
  """LP-FT's first stage: a linear probe (`probe.fit_linear_probe`) on the
  inherited encoder's pooled features of `recipe.probe_images` images of
  `data_config`'s training split (evaluation views, no augmentation; a
  sample drawn by `seed`), behind their standardisation."""
  f = recipe
  classifier = build_classifier(space, arch, num_classes, 0.0, nnx.Rngs(0),
                                f.pool)
  classifier = nnx.merge(nnx.graphdef(classifier),
                         *initial_weights(classifier, inherited))
  feats, labels = pooled_features(classifier, data.eval_batches(
      data_config, data_config.train_split, space.image_size,
      f.probe_images, f.batch_size, seed, 'finetune.batch_size'))
  probe = jax.jit(probe_lib.fit_linear_probe, static_argnums=2)(
      jnp.asarray(feats), jnp.asarray(labels), num_classes)
  top1 = float(np.mean(np.argmax(np.asarray(probe_lib.probe_logits(
      probe, jnp.asarray(feats))), -1) == labels))
  parallel.log(f'finetune: head from a linear probe of {len(labels)} '
               f'training images\' features (train top-1 {100 * top1:.1f}%)')
  return probe


def layer_ids(params: Any, depth: int) -> Any:
  """Each parameter's layer for layer-wise lr decay: 0 for the embeddings,
  i + 1 for block i, depth + 1 for the final norm and the head."""

  def layer(path, _):
    top = str(getattr(path[0], 'key', path[0]))
    if top == 'blocks':
      return int(getattr(path[1], 'key', path[1])) + 1
    return depth + 1 if top in ('norm', 'head') else 0

  return jax.tree_util.tree_map_with_path(layer, params)


def optimizer(params: Any, depth: int, *, schedule: optax.Schedule,
              weight_decay: float, layer_decay: float):
  """AdamW (no decay on biases, norms, tokens) at `schedule`'s rate, the
  rate of layer l scaled by layer_decay ** (depth + 1 - l)."""
  scales = jax.tree.map(lambda l: float(layer_decay**(depth + 1 - l)),
                        layer_ids(params, depth))
  return optax.chain(
      optax.scale_by_adam(b1=0.9, b2=0.999),
      optax.add_decayed_weights(weight_decay, trainer.decay_mask),
      optax.stateless(lambda u, _: jax.tree.map(lambda x, s: x * s, u,
                                                scales)),
      optax.scale_by_schedule(lambda n: -schedule(n)))


class EmaState(NamedTuple):
  """`with_ema`'s optimizer state: the inner optimizer's, and the running
  average of the parameters (a tree like them)."""
  inner: Any
  ema: Any


def with_ema(inner: optax.GradientTransformation,
             decay: float) -> optax.GradientTransformation:
  """`inner`, also keeping an exponential moving average of the parameters
  after each update: ema <- decay * ema + (1 - decay) * params, starting
  from the initial parameters (timm's ModelEma, which DeiT uses). It
  averages params + inner's updates, so it suits tasks without a
  trainer.Task.update_mask (which zeroes updates after the optimizer)."""

  def init(params):
    return EmaState(inner.init(params), jax.tree.map(jnp.asarray, params))

  def update(updates, state, params):
    updates, inner_state = inner.update(updates, state.inner, params)
    ema = jax.tree.map(lambda e, p, u: decay * e + (1 - decay) * (p + u),
                       state.ema, params, updates)
    return updates, EmaState(inner_state, ema)

  return optax.GradientTransformation(init, update)


def topk_correct(logits: jax.Array, labels: jax.Array,
                 valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(top-1, top-5) counts of correct predictions among the valid examples;
  top-5 is top-min(5, classes)."""
  k = min(5, logits.shape[-1])
  top = jax.lax.top_k(logits, k)[1]
  hit = top == labels[:, None]
  return (jnp.sum(hit[:, 0] & valid),
          jnp.sum(jnp.any(hit, axis=-1) & valid))


def evaluate(model: vit.VisionTransformer, batches, mesh=None) -> dict:
  """top1 / top5 (fractions) and the count of images, over `batches`."""
  graphdef, state = nnx.split(model)

  def counts(state, batch, _):
    logits = nnx.merge(graphdef, state)(batch['image'])
    return jnp.stack([*topk_correct(logits, batch['label'], batch['valid']),
                      jnp.sum(batch['valid'])])

  run = evaluator.Evaluator(counts, mesh)
  top1, top5, images = run.sum(batches, run.place(state)).astype(float)
  return {'top1': top1 / images, 'top5': top5 / images, 'images': int(images)}


def check_export(path: epath.Path, arch: Arch, num_classes: int,
                 pool: str = 'cls') -> None:
  """Raises FinetuneError unless the classifier at `path` is of `arch`,
  `num_classes` and `pool` (a finished fine-tuning of another classifier is
  not evaluated as this one's)."""
  meta = artifacts.read_meta(path, 'classifier', FinetuneError)
  theirs = (Arch.from_dict(meta['arch']), meta['num_classes'],
            meta.get('pool', 'cls'))
  if theirs != (arch, num_classes, pool):
    raise FinetuneError(
        f'{path}: holds a classifier of {theirs[0].to_dict()} with '
        f'{theirs[1]} classes pooled by {theirs[2]!r}, not {arch.to_dict()} '
        f'with {num_classes} pooled by {pool!r}; use another workdir')


def finished(workdir: epath.Path) -> dict[str, Any] | None:
  """metrics.json of a fine-tuning already done in `workdir`, else None."""
  metrics = artifacts.finetune_metrics(workdir)
  if not metrics.exists():
    return None
  parallel.log(f'finetune: {metrics} exists; not training again')
  return json.loads(metrics.read_text())


def make_task(recipe, space: SearchSpace, arch: Arch, num_classes: int,
              steps: int, warmup: int, inherited: dict | None,
              probe: dict | None = None) -> trainer.Task:
  """Fine-tuning by `recipe` (config.finetune) as a trainer.Task: the
  classifier for `arch` (its encoder
  from `inherited`, an extracted encoder's parameters, when given; its head
  and a fixed standardisation in front of it from `probe`, `fit_head`'s,
  when given: arguments of the jitted init), cross-entropy on smoothed,
  optionally mixed labels, AdamW with layer-wise lr decay; the forward and
  backward in `recipe.compute_dtype`."""
  f = recipe
  standardize = probe is not None
  graphdef, abstract_params, _ = nnx.split(nnx.eval_shape(
      lambda: build_classifier(space, arch, num_classes, f.drop_path,
                               nnx.Rngs(0), f.pool, standardize)),
                                           nnx.Param, ...)
  schedule = trainer.warmup_cosine(f.lr, steps, warmup)
  dtype = jnp.dtype(f.compute_dtype)

  def init(rng, inputs):
    # inputs: (inherited, probe), or None for random weights.
    return initial_weights(build_classifier(
        space, arch, num_classes, f.drop_path, nnx.Rngs(rng), f.pool,
        standardize), *(inputs or (None, None)))

  def loss(params, fixed, batch, rng, _):
    mix_key, drop_key = jax.random.split(rng)
    targets = optax.smooth_labels(
        jax.nn.one_hot(batch['label'], num_classes), f.label_smoothing)
    images = batch['image']
    if f.random_erase:
      # Per image, before batch mixing, as in DeiT; a key of its own leaves
      # the other draws as they were without erasing.
      images = batch_augment.erase(jax.random.fold_in(rng, 1), images,
                                   f.random_erase)
    images, targets = batch_augment.mix(mix_key, images, targets, f.mixup,
                                        f.cutmix)
    # The forward and backward in `dtype` on copies of the weights; their
    # gradients, the loss and the optimizer stay float32.
    logits = nnx.merge(graphdef, trainer.cast(params, dtype),
                       trainer.cast(fixed, dtype))(
                           images.astype(dtype), rng=drop_key)
    logits = logits.astype(jnp.float32)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return jnp.mean(optax.softmax_cross_entropy(logits, targets)), {
        'train_top1': jax.lax.stop_gradient(accuracy)}

  adamw = optimizer(nnx.to_pure_dict(abstract_params), arch.depth,
                    schedule=schedule, weight_decay=f.weight_decay,
                    layer_decay=f.layer_decay)
  return trainer.Task(
      init=init, loss=loss, schedule=schedule,
      init_inputs=(inherited, probe),
      optimizer=with_ema(adamw, f.ema) if f.ema else adamw)


@dataclasses.dataclass(frozen=True)
class Run:
  """What one fine-tuning run sets beside `config.finetune`'s recipe
  (mode=rank's yardstick fine-tunes many subnets briefly): None or '' keep
  the config's.

  steps: training steps (config: finetune.steps, or its epochs).
  eval_split: the split top-1 is reported on (config: finetune.eval_split,
    else data.eval_split).
  supernet: the trained supernet whose weights it inherits (config:
    search.supernet, else the workdir's).
  from_scratch: random weights instead (config: finetune.from_scratch).
  """
  steps: int | None = None
  eval_split: str = ''
  supernet: str = ''
  from_scratch: bool | None = None


def fine_tune(setup: settings.FinetuneSetup, workdir: epath.Path, arch: Arch,
              run: Run = Run()) -> dict[str, Any]:
  """Fine-tunes `arch` by `setup.recipe` and `run` (or resumes), exports
  the classifier and evaluates it, in `workdir/finetune/`; returns
  metrics.json's content, read back when it exists."""
  f, space, data_config = setup.recipe, setup.space, setup.data
  done = finished(workdir)
  if done is not None:
    return done
  from_scratch = f.from_scratch if run.from_scratch is None else (
      run.from_scratch)
  metrics = artifacts.finetune_metrics(workdir)
  train_source = data.get_source(data_config, data_config.train_split,
                                 space.image_size)
  num_classes = train_source.num_classes
  if not num_classes:
    raise FinetuneError(f'config.data: {data_config.name!r} has no labels; '
                        'fine-tuning needs them')
  data_iter, steps, warmup = data.training_input(
      data_config, f, 'finetune', space.image_size, setup.seed + 7,
      source=train_source, steps=run.steps)
  exported = artifacts.model_dir(workdir, 'finetune')

  def task():
    inherited = probe = None
    if not from_scratch:
      extracted = model_dirs.load_student(
          run.supernet or artifacts.supernet_model(setup.supernet, workdir),
          space).encoder.extract(arch)
      inherited = nnx.to_pure_dict(nnx.state(extracted, nnx.Param))
      if f.head_init == 'probe':
        probe = fit_head(f, data_config, space, arch, num_classes,
                         inherited, setup.seed + 9)
    return make_task(f, space, arch, num_classes, steps, warmup,
                     inherited, probe)

  def save(params, fixed, path):
    if f.head_init == 'probe' and not from_scratch:
      # Exported as a plain classifier: the standardisation folded into the
      # head, the same logits.
      params, fixed = fold_standardization(params, fixed)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_classifier(
        space, arch, num_classes, f.drop_path, nnx.Rngs(0), f.pool)))
    model_dirs.save_classifier(nnx.merge(graphdef, params, fixed), space,
                               arch, path)

  trainer.train(
      trainer.LoopConfig('finetune', artifacts.stage_dir(workdir, 'finetune'),
                         steps, f.batch_size, **setup.loop),
      task, data_iter, seed=setup.seed + 8,
      export=trainer.Export(exported, 'classifier', save,
                            check=lambda path: check_export(
                                path, arch, num_classes, f.pool),
                            # With finetune.ema, the average is the model.
                            params_of=(lambda state: state['opt_state'].ema)
                            if f.ema else None))

  # --- evaluation of the exported classifier ---------------------------------
  model = model_dirs.load_classifier(exported)
  split = run.eval_split or f.eval_split or data_config.eval_split
  source = data.get_source(data_config, split, space.image_size)
  result = evaluate(model, data.eval_pipeline(
      source, image_size=space.image_size,
      crop_fraction=data_config.eval_crop_fraction,
      batch_size=parallel.check_batch_size(f.batch_size,
                                           'finetune.batch_size'),
      read=data.reading(data_config, source)))
  result.update({'split': split, 'arch': arch.to_dict(),
                 'params': space.count_params(arch),
                 'macs': space.count_macs(arch), 'steps': steps,
                 'inherited': not from_scratch})
  tensorboard.write_series(metrics.parent, [(steps, {
      f'{split}/top1': result['top1'], f'{split}/top5': result['top5']})])
  artifacts.write_json(metrics, result)
  parallel.log(f'finetune: top-1 {100 * result["top1"]:.2f}%, top-5 '
               f'{100 * result["top5"]:.2f}% on {result["images"]} images of '
               f'{split!r}; wrote {metrics} and {exported}')
  return result
