"""mode=finetune: the found subnet, with its inherited weights, as a classifier.

The Arch (the search's `best_arch.json`, or one given in the config) is
extracted from the trained supernet into a dense `VisionTransformer`, a new
head is added, and the whole network is fine-tuned with labels: AdamW with
warm-up + cosine, layer-wise learning-rate decay, drop path, label smoothing
and optional mixup/cutmix. Then top-1 / top-5 on the held-out split.

Writes `finetune/checkpoints` (resume), `finetune/metrics.jsonl`,
`finetune/loss.png`, `finetune/metrics.json` (the evaluation) and
`finetune/model/`, the classifier alone: `load_classifier(path)` gives it
back for inference without any supernet code.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from masktas_jax import artifacts, config_lib, data, model_dirs, parallel
from masktas_jax import trainer
from masktas_jax.errors import FinetuneError
from masktas_jax.models import vit
from masktas_jax.space import Arch, SearchSpace


def resolve_arch(config, workdir: epath.Path, space: SearchSpace) -> Arch:
  """`config.finetune.arch` (a JSON file or inline JSON, an Arch or a
  best_arch.json), or the search's best_arch.json in the workdir."""
  spec = config.finetune.arch.strip()
  if spec.startswith('{'):
    text, where = spec, 'config.finetune.arch'
  else:
    path = epath.Path(spec) if spec else artifacts.best_arch(workdir)
    if not path.exists():
      raise FinetuneError(
          f'config.finetune.arch: {path} does not exist' if spec else
          f'config.finetune.arch: empty and no search result at {path}; run '
          '--config.mode=search first or give an Arch JSON')
    text, where = path.read_text(), str(path)
  try:
    value = json.loads(text)
    return space.validate(Arch.from_dict(value.get('arch', value)))
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise FinetuneError(f'{where}: not an Arch of this space ({e})') from e


def build_classifier(space: SearchSpace, arch: Arch, num_classes: int,
                     drop_path: float, rngs: nnx.Rngs) -> vit.VisionTransformer:
  return vit.VisionTransformer(
      embed_dim=arch.embed_dim, num_heads=arch.num_heads,
      mlp_dims=arch.mlp_dims, image_size=space.image_size,
      patch_size=space.patch_size, num_classes=num_classes,
      in_chans=space.in_chans, rngs=rngs, drop_path_rate=drop_path)


def initial_weights(classifier: vit.VisionTransformer,
                    inherited: dict | None) -> tuple[dict, dict]:
  """(params, other variables) of `classifier` as pure dicts, every weight
  but the head replaced by `inherited` (an extracted encoder's state)."""
  _, params, rest = nnx.split(classifier, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  if inherited is not None:
    params.update({k: v for k, v in inherited.items()
                   if k in params and k != 'head'})
  return params, nnx.to_pure_dict(rest)


def layer_ids(params: Any, depth: int) -> Any:
  """Each parameter's layer for layer-wise lr decay: 0 for the embeddings,
  i + 1 for block i, depth + 1 for the final norm and the head."""

  def layer(path, _):
    top = str(getattr(path[0], 'key', path[0]))
    if top == 'blocks':
      return int(getattr(path[1], 'key', path[1])) + 1
    return depth + 1 if top in ('norm', 'head') else 0

  return jax.tree_util.tree_map_with_path(layer, params)


def optimizer(params: Any, depth: int, *, lr: float, steps: int, warmup: int,
              weight_decay: float, layer_decay: float):
  """AdamW (no decay on biases, norms, tokens) with warm-up + cosine and the
  learning rate of layer l scaled by layer_decay ** (depth + 1 - l)."""
  scales = jax.tree.map(lambda l: float(layer_decay**(depth + 1 - l)),
                        layer_ids(params, depth))
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0),
                                                max(steps, warmup + 1), 0.0)
  return optax.chain(
      optax.scale_by_adam(b1=0.9, b2=0.999),
      optax.add_decayed_weights(weight_decay, trainer.decay_mask),
      optax.stateless(lambda u, _: jax.tree.map(lambda x, s: x * s, u,
                                                scales)),
      optax.scale_by_schedule(lambda n: -schedule(n)))


def mix(rng: jax.Array, images: jax.Array, targets: jax.Array, mixup: float,
        cutmix: float) -> tuple[jax.Array, jax.Array]:
  """Mixup (alpha `mixup`) or CutMix (alpha `cutmix`), one of them per batch
  at random when both are on, pairing each image with its neighbour in the
  batch. images (B, S, S, C), targets (B, K) soft labels."""
  if not mixup and not cutmix:
    return images, targets
  pick, beta_key, box_key = jax.random.split(rng, 3)
  use_cutmix = (jax.random.bernoulli(pick) if mixup and cutmix else
                jnp.asarray(bool(cutmix)))
  alpha = jnp.where(use_cutmix, cutmix or 1.0, mixup or 1.0)
  lam = jax.random.beta(beta_key, alpha, alpha)
  other_images, other_targets = (jnp.roll(images, 1, 0),
                                 jnp.roll(targets, 1, 0))
  size = images.shape[1]
  # CutMix box of area (1 - lam), clipped; lam is then the kept area.
  cut = jnp.sqrt(1 - lam) * size
  cy, cx = jax.random.uniform(box_key, (2,), maxval=size)
  y0, y1 = jnp.clip(cy - cut / 2, 0, size), jnp.clip(cy + cut / 2, 0, size)
  x0, x1 = jnp.clip(cx - cut / 2, 0, size), jnp.clip(cx + cut / 2, 0, size)
  grid = jnp.arange(size) + 0.5
  inside = ((grid[:, None] > y0) & (grid[:, None] < y1) &
            (grid[None, :] > x0) & (grid[None, :] < x1))
  box_lam = 1 - jnp.mean(inside)
  mixed = jnp.where(use_cutmix,
                    jnp.where(inside[None, :, :, None], other_images, images),
                    lam * images + (1 - lam) * other_images)
  weight = jnp.where(use_cutmix, box_lam, lam)
  return mixed, weight * targets + (1 - weight) * other_targets


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
  mesh = mesh or parallel.make_mesh()
  graphdef, state = nnx.split(model)
  rep = parallel.replicated(mesh)

  @jax.jit
  def counts(state, batch):
    logits = nnx.merge(graphdef, state)(batch['image'])
    return (*topk_correct(logits, batch['label'], batch['valid']),
            jnp.sum(batch['valid']))

  state = jax.device_put(state, rep)
  totals = np.zeros(3)
  for batch in batches:
    totals += np.asarray(jax.device_get(counts(
        state, parallel.global_batch(batch, mesh))), float)
  return {'top1': totals[0] / totals[2], 'top5': totals[1] / totals[2],
          'images': int(totals[2])}


def run(config, workdir: epath.Path) -> dict[str, Any]:
  """Fine-tunes (or resumes), evaluates and exports; returns metrics.json's
  content."""
  f = config.finetune
  out = artifacts.stage_dir(workdir, 'finetune')
  metrics = artifacts.finetune_metrics(workdir)
  if metrics.exists():
    parallel.log(f'finetune: {metrics} exists; not training again')
    return json.loads(metrics.read_text())
  space = config_lib.space_from_config(config)
  arch = resolve_arch(config, workdir, space)
  train_source = data.get_source(config.data, config.data.train_split)
  num_classes = train_source.num_classes
  if not num_classes:
    raise FinetuneError(f'config.data: {config.data.name!r} has no labels; '
                        'fine-tuning needs them')

  # --- the classifier: inherited weights, or random ones -------------------
  if not f.from_scratch:
    extracted = model_dirs.load_student(
        artifacts.supernet_model(config, workdir), config).encoder.extract(arch)
    inherited = nnx.to_pure_dict(nnx.state(extracted))
  graphdef, abstract_params, _ = nnx.split(nnx.eval_shape(
      lambda: build_classifier(space, arch, num_classes, f.drop_path,
                               nnx.Rngs(0))), nnx.Param, ...)

  data_iter, steps, warmup = data.training_input(
      config, 'finetune', config.seed + 7, source=train_source)
  opt = optimizer(nnx.to_pure_dict(abstract_params), arch.depth, lr=f.lr,
                  steps=steps, warmup=warmup, weight_decay=f.weight_decay,
                  layer_decay=f.layer_decay)

  def init_fn(rng):
    params, fixed = initial_weights(
        build_classifier(space, arch, num_classes, f.drop_path,
                         nnx.Rngs(rng)), None if f.from_scratch else inherited)
    return {'params': params, 'fixed': fixed, 'opt_state': opt.init(params)}

  def step_fn(state, batch, rng):
    mix_key, drop_key = jax.random.split(rng)
    targets = optax.smooth_labels(
        jax.nn.one_hot(batch['label'], num_classes), f.label_smoothing)
    images, targets = mix(mix_key, batch['image'], targets, f.mixup, f.cutmix)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state['fixed'])
      logits = model(images, rng=drop_key)
      return jnp.mean(optax.softmax_cross_entropy(logits, targets)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = opt.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return {**state, 'params': params, 'opt_state': opt_state}, {
        'loss': loss, 'train_top1': accuracy}

  state, reached = trainer.train(
      trainer.LoopConfig.from_config(config, 'finetune', out, steps,
                                     f.batch_size),
      init_fn=init_fn, step_fn=step_fn, data_iter=data_iter,
      seed=config.seed + 8)
  if reached < steps:
    return None

  # --- evaluation and export ------------------------------------------------
  model = nnx.merge(graphdef, state['params'], state['fixed'])
  split = f.eval_split or config.data.eval_split
  result = evaluate(model, data.eval_pipeline(
      data.get_source(config.data, split), image_size=space.image_size,
      batch_size=parallel.check_batch_size(f.batch_size,
                                           'finetune.batch_size')))
  result.update({'split': split, 'arch': arch.to_dict(),
                 'params': space.count_params(arch),
                 'macs': space.count_macs(arch), 'steps': steps,
                 'inherited': not f.from_scratch})
  exported = artifacts.model_dir(workdir, 'finetune')
  model_dirs.save_classifier(model, space, arch, exported)
  if jax.process_index() == 0:
    metrics.write_text(json.dumps(result, indent=2))
  parallel.log(f'finetune: top-1 {100 * result["top1"]:.2f}%, top-5 '
               f'{100 * result["top5"]:.2f}% on {result["images"]} images of '
               f'{split!r}; wrote {metrics} and {exported}')
  return result
