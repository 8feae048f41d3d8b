"""mode=finetune: inherited classifier, training, top-1/top-5, export."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, errors
from masktas_jax.models import student
from masktas_jax.space import Arch, SearchSpace
from masktas_jax.stages import finetune
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import batch_augment, finetuning, trainer
import helpers
from helpers import Interrupted, interrupt_after, read_scalars
from helpers import eval_batches, search_config


def test_topk_against_a_hand_checked_example():
  logits = jnp.array([
      [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.2],  # label 1: top-1.
      [0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.6],  # label 4: 6th of 7: neither.
      [0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.6],  # label 3: 5th: top-5 only.
      [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0, but padding.
  ])
  top1, top5 = finetuning.topk_correct(logits, jnp.array([1, 4, 3, 0]),
                                     jnp.array([True, True, True, False]))
  assert (int(top1), int(top5)) == (1, 2)


def test_mixup_and_cutmix_keep_targets_consistent_with_pixels():
  images = jnp.stack([jnp.full((8, 8, 3), float(i)) for i in range(4)])
  targets = jax.nn.one_hot(jnp.arange(4), 4)
  for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0)):
    mixed, soft = batch_augment.mix(jax.random.key(0), images, targets, mixup,
                               cutmix)
    np.testing.assert_allclose(soft.sum(-1), 1, atol=1e-6)
    # Image i mixes itself with image i - 1 in the proportions of its
    # target: its mean pixel is the target-weighted mean of the two.
    want = soft @ jnp.arange(4.0)
    np.testing.assert_allclose(mixed.mean((1, 2, 3)), want, atol=1e-5)
  assert batch_augment.mix(jax.random.key(0), images, targets, 0, 0)[0] is images


def test_inherited_classifier_equals_the_supernet_subnet(workdir):  # noqa: F811
  config = search_config()
  space = config_lib.space_from_config(config)
  student = model_dirs.load_student(
      artifacts.model_dir(epath.Path(workdir), 'supernet'), space)
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  rng = np.random.default_rng(0)
  for arch in (space.max_arch(), space.sample(rng)):
    inherited = nnx.to_pure_dict(nnx.state(student.encoder.extract(arch)))
    model = finetuning.build_classifier(space, arch, 10, 0.1, nnx.Rngs(5))
    params, fixed = finetuning.initial_weights(model, inherited)
    graphdef = nnx.split(model, nnx.Param, ...)[0]
    classifier = nnx.merge(graphdef, params, fixed)
    want = student.encoder.encode(images, space.encode(arch), mode='mask')
    np.testing.assert_allclose(classifier.encode(images),
                               want[..., :arch.embed_dim], atol=1e-5)
    # Drop path is on only with an rng.
    assert not np.allclose(classifier.encode(images, rng=jax.random.key(1)),
                           want[..., :arch.embed_dim], atol=1e-3)


def test_layer_decay_scales_the_learning_rate_per_layer():
  params = {'patch_embed': {'w': jnp.ones(2)}, 'blocks': {
      0: {'w': jnp.ones(2)}, 1: {'w': jnp.ones(2)}}, 'head': {'w': jnp.ones(2)}}
  ids = finetuning.layer_ids(params, depth=2)
  assert ids == {'patch_embed': {'w': 0}, 'blocks': {0: {'w': 1}, 1: {'w': 2}},
                 'head': {'w': 3}}
  opt = finetuning.optimizer(params, 2,
                             schedule=trainer.warmup_cosine(1.0, 10, 0),
                             weight_decay=0.0, layer_decay=0.5)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = opt.update(grads, opt.init(params), params)
  # Adam's first step moves every weight by lr; the decay scales it.
  step = {k: float(-jax.tree.leaves(v)[0][0]) for k, v in updates.items()}
  assert step['head'] == pytest.approx(1.0, rel=1e-3)
  assert step['patch_embed'] == pytest.approx(0.125, rel=1e-3)
  assert float(-updates['blocks'][1]['w'][0]) == pytest.approx(0.5, rel=1e-3)


def _train_loss(model, config, num_images=128):
  """Cross-entropy of `model` on fixed centre-cropped training images."""
  batch = next(iter(data.eval_pipeline(
      data.get_source(config.data, 'train'), image_size=32,
      batch_size=num_images)))
  logits = model(jnp.asarray(data.normalize(batch['image'])))
  return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.asarray(batch['label']))))


def test_finetune_lowers_the_loss_evaluates_and_exports(workdir, tmp_path):  # noqa: F811
  space = config_lib.space_from_config(search_config())
  arch = space.sample(np.random.default_rng(3))
  config = search_config(**{
      'finetune.steps': 40, 'finetune.batch_size': 32, 'finetune.lr': 2e-3,
      'finetune.warmup_epochs': 0, 'finetune.mixup': 0.0,
      'finetune.cutmix': 0.0, 'finetune.eval_split': 'validation',
      # The pipeline test covers the default CLS token.
      'finetune.pool': 'mean', 'log_every': 5, 'checkpoint_every': 20})
  config.finetune.arch = json.dumps({'arch': arch.to_dict()})
  config.search.supernet = str(
      artifacts.model_dir(epath.Path(workdir), 'supernet'))
  result = finetune.run(config, epath.Path(tmp_path))
  assert result == json.loads((tmp_path / 'finetune/metrics.json').read_text())
  assert result['images'] == 180 and result['arch'] == arch.to_dict()
  assert 0 <= result['top1'] <= result['top5'] <= 1
  assert read_scalars(tmp_path / 'finetune')['validation/top1'] == {
      40: pytest.approx(result['top1'])}

  # The classifier it started from (the trainer's init key, the inherited
  # weights) against the one it exported: lower loss on the same images.
  student = model_dirs.load_student(config.search.supernet)
  inherited = nnx.to_pure_dict(nnx.state(student.encoder.extract(arch)))
  init_key = jax.random.split(jax.random.key(config.seed + 8))[0]
  start = finetuning.build_classifier(space, arch, 10, config.finetune.drop_path,
                                    nnx.Rngs(init_key), pool='mean')
  params, fixed = finetuning.initial_weights(start, inherited)
  start = nnx.merge(nnx.split(start, nnx.Param, ...)[0], params, fixed)
  model = model_dirs.load_classifier(tmp_path / 'finetune/model')
  assert model.pool == 'mean'
  before, after = _train_loss(start, config), _train_loss(model, config)
  assert after < before - 0.05, (before, after)

  # The export is the trained state: the last checkpoint's parameters.
  with ocp.CheckpointManager((tmp_path / 'finetune/checkpoints').resolve(),
                             item_names=('state', 'data')) as manager:
    saved = manager.restore(40, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
  assert int(saved['step']) == 40
  exported = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(saved['params']), jax.tree.leaves(exported)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The sharded evaluation against the classifier's logits on the host.
  batches = list(data.eval_pipeline(
      data.get_source(config.data, 'validation'), image_size=32,
      batch_size=32))
  logits = np.concatenate([np.asarray(model(jnp.asarray(data.normalize(
      b['image']))))[b['valid']] for b in batches])
  labels = np.concatenate([b['label'][b['valid']] for b in batches])
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert result['images'] == len(labels) == 180
  assert result['top1'] == pytest.approx(np.mean(top5[:, 0] == labels))
  assert result['top5'] == pytest.approx(np.mean(np.any(
      top5 == labels[:, None], axis=1)))
  # Done: a rerun reads the result.
  assert finetune.run(config, epath.Path(tmp_path)) == result
  # Without metrics.json the export is evaluated again, but only if it is
  # of the Arch asked for.
  (tmp_path / 'finetune/metrics.json').unlink()
  other = next(a for a in (space.sample(np.random.default_rng(i))
                           for i in range(10, 40)) if a != arch)
  config.finetune.arch = json.dumps(other.to_dict())
  with pytest.raises(errors.FinetuneError, match='holds a classifier of'):
    finetune.run(config, epath.Path(tmp_path))
  assert not (tmp_path / 'finetune/metrics.json').exists()
  config.finetune.arch = json.dumps(arch.to_dict())
  assert finetune.run(config, epath.Path(tmp_path)) == result


def test_a_missing_or_foreign_arch_is_a_clear_error(tmp_path):
  config = search_config()
  space = config_lib.space_from_config(config)
  with pytest.raises(errors.FinetuneError, match='run --config.mode=search'):
    finetune.resolve_arch(config, epath.Path(tmp_path), space)
  config.finetune.arch = json.dumps(Arch(40, 2, (1, 1), (2.0, 2.0)).to_dict())
  with pytest.raises(errors.FinetuneError, match='embed_dim'):
    finetune.resolve_arch(config, epath.Path(tmp_path), space)


def _every_config():
  """(name, config) of every configs/*.py file with each argument it takes."""
  root = helpers.ROOT / 'configs'
  transfer = [f'transfer.py:{d}' for d in ('cifar10', 'oxford_iiit_pet')]
  files = ['demo.py', 'demo.py:wide', 'fashion.py', 'tiny.py', 'small.py',
           'base.py', 'paper.py:tiny', 'paper.py:base'] + transfer
  assert {f.split(':')[0] for f in files} == {p.name for p in root.glob(
      '*.py')}, 'a config file this test does not know'
  return [(f, config_lib.load_config(str(root / f), check=False))
          for f in files]


def test_inherited_weights_default_to_a_pooling_supernet_training_scores(
    monkeypatch):
  """Every config that fine-tunes inherited weights reads them through
  tokens the student's losses score one by one: the patch tokens, and the
  CLS output only when supernet.cls_target supervises it; and that is so:
  without it the projected features do not depend on the CLS output at
  all, the pixel predictions are one row per patch (the decoder reads CLS
  only as context); with it the CLS output has a projection of its own."""
  for name, config in _every_config():
    if not config.finetune.from_scratch:
      assert config.finetune.pool in student.scored_pools(
          config.supernet.cls_target), name
  assert student.scored_pools('none') == ('mean',)
  assert 'cls' in student.scored_pools('teacher_mean')
  space = SearchSpace((32, 48), (2, 3), (1, 2), (2.0, 3.0), image_size=16,
                      patch_size=4, num_classes=5)
  model = student.Student(
      student.StudentConfig(space, teacher_dim=16, decoder_embed_dim=16,
                            decoder_depth=1, decoder_num_heads=1),
      rngs=nnx.Rngs(0)).extract(space.max_arch())
  images = jax.random.normal(jax.random.key(0), (2, space.image_size,
                                                 space.image_size, 3))
  n = space.num_patches
  ids_keep = jnp.tile(jnp.arange(0, n, 2), (2, 1))
  ids_restore = jnp.tile(jnp.argsort(jnp.concatenate(
      [jnp.arange(0, n, 2), jnp.arange(1, n, 2)])), (2, 1))
  encode, shifts = model.encoder.encode, []
  # The encoder's tokens (B, 1 + K, E) moved by the (2, E) shift in `shifts`:
  # row 0 on the CLS token, row 1 on every patch token.
  monkeypatch.setattr(model.encoder, 'encode', lambda *a: encode(*a).at[
      :, 0].add(shifts[-1][0]).at[:, 1:].add(shifts[-1][1]))

  def features(shift, cls=False):
    shifts.append(shift)
    pixels, features = model(images, ids_keep, ids_restore, cls=cls)
    assert pixels.shape[1] == n  # A prediction per patch, none for CLS.
    assert features.shape[1] == n // 2 + cls
    return jnp.sum(jnp.sin(features))

  grad = jax.grad(features)(jnp.zeros((2, space.max_embed)))
  assert np.all(np.asarray(grad[0]) == 0)  # CLS: never scored.
  assert np.abs(np.asarray(grad[1])).max() > 1e-3  # Patches: scored.
  grad = jax.grad(lambda s: features(s, cls=True))(
      jnp.zeros((2, space.max_embed)))
  assert np.abs(np.asarray(grad[0])).max() > 1e-3  # CLS projected too.


def test_mean_pooled_classifier_reads_the_mean_patch_token(tmp_path):
  """finetune.pool='mean' (AutoFormer's --gp): the head reads the mean of the
  final-normed patch tokens, CLS left out; the choice survives the export."""
  space = config_lib.space_from_config(search_config())
  arch = space.sample(np.random.default_rng(1))
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  mean = finetuning.build_classifier(space, arch, 10, 0.0, nnx.Rngs(3),
                                     pool='mean')
  tokens = np.asarray(mean.encode(images), np.float64)
  kernel, bias = (np.asarray(x[...], np.float64)
                  for x in (mean.head.kernel, mean.head.bias))
  np.testing.assert_allclose(mean(images), tokens[:, 1:].mean(1) @ kernel + bias,
                             atol=1e-5)
  cls = finetuning.build_classifier(space, arch, 10, 0.0, nnx.Rngs(3))
  np.testing.assert_allclose(cls(images), tokens[:, 0] @ kernel + bias,
                             atol=1e-5)
  assert not np.allclose(cls(images), mean(images), atol=1e-2)
  model_dirs.save_classifier(mean, space, arch, tmp_path / 'model')
  loaded = model_dirs.load_classifier(tmp_path / 'model')
  assert loaded.pool == 'mean'
  np.testing.assert_allclose(loaded(images), mean(images), atol=1e-6)
  finetuning.check_export(tmp_path / 'model', arch, 10, 'mean')
  with pytest.raises(errors.FinetuneError, match="pooled by 'mean', not .* "
                     "pooled by 'cls'"):
    finetuning.check_export(tmp_path / 'model', arch, 10, 'cls')
  with pytest.raises(ValueError, match="pool: expected one of"):
    finetuning.build_classifier(space, arch, 10, 0.0, nnx.Rngs(3), pool='max')


def _timm_erasing_boxes(h, w, count, rng):
  """(box h, box w) per image by timm's RandomErasing loop (one box, area
  2-33%, aspect log-uniform in [0.3, 1/0.3], 10 attempts): the reference."""
  boxes = []
  for _ in range(count):
    for _ in range(10):
      target = rng.uniform(0.02, 1 / 3) * h * w
      aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
      bh = int(round(math.sqrt(target * aspect)))
      bw = int(round(math.sqrt(target / aspect)))
      if bw < w and bh < h:
        boxes.append((bh, bw))
        break
  return np.array(boxes)


def test_random_erasing_against_timms_algorithm():
  h, w, count = 24, 32, 3000
  images = jnp.full((count, h, w, 3), 5.0)
  out = np.asarray(batch_augment.erase(jax.random.key(0), images, 1.0))
  erased = out != 5.0
  # One box per image, the same on every channel, filled with N(0, 1).
  assert (erased == erased[..., :1]).all()
  mask = erased[..., 0]
  rows, cols = mask.any(2), mask.any(1)
  np.testing.assert_array_equal(mask, rows[:, :, None] & cols[:, None, :])
  assert mask.any((1, 2)).all()
  assert abs(out[erased].mean()) < 0.01 and abs(out[erased].std() - 1) < 0.01
  # Box sizes distributed as timm's loop draws them.
  ours = np.stack([rows.sum(1), cols.sum(1)], 1)
  ref = _timm_erasing_boxes(h, w, 20_000, np.random.default_rng(0))
  for stat in (lambda b: b[:, 0] * b[:, 1] / (h * w), lambda b: b[:, 0],
               lambda b: b[:, 1], lambda b: np.log(b[:, 0] / b[:, 1])):
    a, r = stat(ours), stat(ref)
    assert abs(a.mean() - r.mean()) < 4 * r.std() / np.sqrt(count), (
        a.mean(), r.mean())
    assert abs(a.std() - r.std()) < 0.05 * r.std(), (a.std(), r.std())
  assert ours[:, 0].max() < h and ours[:, 1].max() < w
  # Placed uniformly where it fits: the mean box centre is the image's.
  centre = (np.argmax(rows, 1) + (ours[:, 0] - 1) / 2) / (h - 1)
  assert abs(centre.mean() - 0.5) < 0.02
  # With probability p, about p of the images; none at 0.
  some = np.asarray(batch_augment.erase(jax.random.key(1), images, 0.25))
  share = (some != 5.0).any((1, 2, 3)).mean()
  assert abs(share - 0.25) < 0.04, share
  np.testing.assert_array_equal(
      batch_augment.erase(jax.random.key(1), images, 0.0), images)


def test_the_training_loss_erases_when_asked():
  """finetune.random_erase reaches the step: with it, the loss of the same
  weights, batch and key changes; without it, the images are untouched."""
  space = config_lib.space_from_config(search_config())
  arch = space.min_arch()
  batch = {'image': jax.random.normal(jax.random.key(0), (8, 32, 32, 3)),
           'label': jnp.arange(8) % 10}
  losses = {}
  for p in (0.0, 1.0):
    config = search_config(**{'finetune.random_erase': p,
                              'finetune.mixup': 0.0, 'finetune.cutmix': 0.0,
                              'finetune.drop_path': 0.0})
    task = finetuning.make_task(config.finetune, space, arch, 10, 10, 0,
                                None)
    params, fixed = task.init(jax.random.key(1), None)
    losses[p] = float(task.loss(params, fixed, batch, jax.random.key(2),
                                None)[0])
    if not p:
      model = nnx.merge(nnx.split(finetuning.build_classifier(
          space, arch, 10, 0.0, nnx.Rngs(0), config.finetune.pool),
                                  nnx.Param, ...)[0], params, fixed)
      want = optax.softmax_cross_entropy(model(batch['image']), jax.nn.one_hot(
          batch['label'], 10) * (1 - config.finetune.label_smoothing) +
                                         config.finetune.label_smoothing / 10)
      assert losses[p] == pytest.approx(float(want.mean()), rel=1e-5)
  assert abs(losses[1.0] - losses[0.0]) > 1e-3, losses


def test_bfloat16_fine_tuning_keeps_float32_weights_and_close_gradients():
  """finetune.compute_dtype=bfloat16: every matmul of the step in bf16 (drop
  path on), the loss, gradients, weights and optimizer state float32, loss
  and gradients close to the float32 step's."""
  space = config_lib.space_from_config(search_config())
  arch = space.max_arch()
  batch = {'image': jax.random.normal(jax.random.key(0), (8, 32, 32, 3)),
           'label': jnp.arange(8) % 10}
  out = {}
  for dtype in ('float32', 'bfloat16'):
    config = search_config(**{'finetune.compute_dtype': dtype,
                              'finetune.drop_path': 0.1})
    task = finetuning.make_task(config.finetune, space, arch, 10, 10, 0,
                                None)
    params, fixed = task.init(jax.random.key(1), None)
    loss = lambda p: task.loss(p, fixed, batch, jax.random.key(2), None)[0]
    assert helpers.matmul_dtypes(jax.make_jaxpr(loss)(params).jaxpr) == {
        (dtype, dtype)}
    value, grads = jax.value_and_grad(loss)(params)
    assert value.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(grads)} == {np.dtype('float32')}
    out[dtype] = float(value), np.concatenate(
        [np.ravel(g) for g in jax.tree.leaves(grads)])
    prog = trainer.program(task)
    state, _ = prog.step(prog.init(jax.random.key(1), None), batch,
                         jax.random.key(2), None)
    assert {x.dtype for x in jax.tree.leaves(
        (state['params'], state['opt_state'])) if jnp.issubdtype(
            x.dtype, jnp.floating)} == {np.dtype('float32')}
  assert out['bfloat16'][0] == pytest.approx(out['float32'][0], rel=2e-2)
  g16, g32 = out['bfloat16'][1], out['float32'][1]
  cosine = g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32)
  assert cosine > 0.99, cosine
  # bf16 is not float32 in disguise: the gradients do differ.
  assert np.abs(g16 - g32).max() > 1e-6


def test_with_ema_averages_the_parameters_after_each_update():
  params = {'w': jnp.array([1.0, -2.0]), 'b': jnp.array(0.5)}
  opt = finetuning.with_ema(optax.adam(0.1), 0.7)
  state = opt.init(params)
  ema = {k: np.asarray(v, np.float64) for k, v in params.items()}
  for step in range(5):
    grads = jax.tree.map(lambda p, s=step: p * (s + 1) - 0.3, params)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ema = {k: 0.7 * ema[k] + 0.3 * np.asarray(params[k], np.float64)
           for k in ema}
    for k in ema:
      np.testing.assert_allclose(state.ema[k], ema[k], rtol=1e-6)
  # The updates are the inner optimizer's alone.
  plain = optax.adam(0.1)
  p2 = {'w': jnp.array([1.0, -2.0]), 'b': jnp.array(0.5)}
  s2 = plain.init(p2)
  for step in range(5):
    grads = jax.tree.map(lambda p, s=step: p * (s + 1) - 0.3, p2)
    u, s2 = plain.update(grads, s2, p2)
    p2 = optax.apply_updates(p2, u)
  for k in p2:
    np.testing.assert_allclose(params[k], p2[k], rtol=1e-6)


def test_finetuning_with_ema_exports_the_average_and_resumes_it(
    workdir, tmp_path, monkeypatch):  # noqa: F811
  space = config_lib.space_from_config(search_config())
  arch = space.sample(np.random.default_rng(3))
  config = search_config(**{
      'finetune.steps': 6, 'finetune.batch_size': 16, 'finetune.ema': 0.8,
      'finetune.warmup_epochs': 0, 'finetune.eval_split': 'validation',
      'log_every': 2, 'checkpoint_every': 2})
  config.finetune.arch = json.dumps(arch.to_dict())
  config.search.supernet = str(
      artifacts.model_dir(epath.Path(workdir), 'supernet'))
  finetune.run(config, epath.Path(tmp_path / 'a'))
  # Killed after step 3 (last checkpoint: step 2), then resumed.
  interrupt_after(monkeypatch, 3)
  with pytest.raises(Interrupted):
    finetune.run(config, epath.Path(tmp_path / 'b'))
  finetune.run(config, epath.Path(tmp_path / 'b'))
  with ocp.CheckpointManager((tmp_path / 'a/finetune/checkpoints').resolve(),
                             item_names=('state', 'data')) as manager:
    saved = manager.restore(6, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
  exported = {
      run: nnx.to_pure_dict(nnx.state(model_dirs.load_classifier(
          tmp_path / run / 'finetune/model'), nnx.Param))
      for run in ('a', 'b')}
  ema, last = saved['opt_state']['ema'], saved['params']
  for e, p, a, b in zip(*(jax.tree.leaves(t) for t in (
      ema, last, exported['a'], exported['b']))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  assert any(not np.allclose(e, p) for e, p in zip(jax.tree.leaves(ema),
                                                    jax.tree.leaves(last)))


def test_lp_ft_starts_from_a_probe_of_standardised_features(
    workdir, tmp_path, monkeypatch):  # noqa: F811
  """finetune.head_init='probe': the head starts as a linear probe behind
  the standardisation of the inherited features (their mean and 1 / std,
  checked against float64 NumPy), which stays fixed through fine-tuning,
  and the export, a plain classifier, computes the trained model's logits.
  """
  space = config_lib.space_from_config(search_config())
  arch = space.sample(np.random.default_rng(3))
  config = search_config(**{
      'finetune.steps': 4, 'finetune.batch_size': 16,
      'finetune.head_init': 'probe', 'finetune.probe_images': 48,
      'finetune.pool': 'mean', 'finetune.warmup_epochs': 0,
      'finetune.eval_split': 'validation', 'log_every': 2,
      'checkpoint_every': 2})
  config.finetune.arch = json.dumps(arch.to_dict())
  config.search.supernet = str(
      artifacts.model_dir(epath.Path(workdir), 'supernet'))
  probes = []
  fit_head = finetuning.fit_head
  monkeypatch.setattr(finetuning, 'fit_head', lambda *a: probes.append(
      fit_head(*a)) or probes[-1])
  finetune.run(config, epath.Path(tmp_path))
  probe = {k: np.asarray(v, np.float64) for k, v in probes[0].items()}

  # The inherited encoder's mean patch tokens of the probe's images.
  encoder = model_dirs.load_student(
      config.search.supernet).encoder.extract(arch)
  batches = eval_batches(config, config.data.train_split, 48, 16,
                         config.seed + 9)
  feats = np.concatenate([np.asarray(encoder.encode(jnp.asarray(
      data.normalize(b['image']))), np.float64)[b['valid']][:, 1:].mean(1)
                          for b in batches])
  assert len(feats) == 48
  helpers.assert_close(probe['mean'], feats.mean(0), np.abs(feats).max())
  helpers.assert_close(probe['scale'], 1 / feats.std(0), 1 / feats.std(0),
                       rtol=1e-4)
  # The classifier it starts from reads the standardised features.
  start = finetuning.build_classifier(space, arch, 10, 0.0, nnx.Rngs(0),
                                      'mean', standardize=True)
  inherited = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
  start = nnx.merge(nnx.graphdef(start), *finetuning.initial_weights(
      start, inherited, probes[0]))
  images = jnp.asarray(data.normalize(batches[0]['image']))
  want = ((feats[:16] - probe['mean']) * probe['scale']) @ probe['kernel'] + (
      probe['bias'])
  helpers.assert_close(np.asarray(start(images)), want, np.abs(want).max())

  # Fixed through training; the export computes the trained logits.
  with ocp.CheckpointManager((tmp_path / 'finetune/checkpoints').resolve(),
                             item_names=('state', 'data')) as manager:
    saved = manager.restore(4, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
  np.testing.assert_array_equal(saved['fixed']['feature_mean'], probes[0]['mean'])
  np.testing.assert_array_equal(saved['fixed']['feature_scale'],
                                probes[0]['scale'])
  assert not np.allclose(saved['params']['head']['kernel'], probe['kernel'])
  trained = nnx.merge(nnx.graphdef(start), saved['params'], saved['fixed'])
  exported = model_dirs.load_classifier(tmp_path / 'finetune/model')
  assert not exported.standardize
  want = np.asarray(trained(images), np.float64)
  helpers.assert_close(np.asarray(exported(images)), want, np.abs(want).max())


def test_lp_ft_needs_inherited_weights():
  with pytest.raises(errors.ConfigError, match='finetune.head_init'):
    search_config(**{'finetune.head_init': 'probe',
                     'finetune.from_scratch': True})
  with pytest.raises(errors.ConfigError, match='finetune.head_init'):
    search_config(**{'finetune.head_init': 'linear'})
