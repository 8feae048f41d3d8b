"""mode=supernet: masked distillation (paper Algorithm 1)."""

import json
import math

import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, errors, losses
from masktas_jax.masking import random_masking
from masktas_jax.models.mae import MAE
from masktas_jax.models.student import Student
from masktas_jax.stages import supernet as supernet_stage
from masktas_jax.training import trainer
import helpers
from helpers import Interrupted, demo_config, interrupt_after, read_scalars


def test_training_lowers_the_loss_compiling_once(teacher_dir, tmp_path,
                                                 monkeypatch):
  traces = []
  original = losses.student_loss
  monkeypatch.setattr(losses, 'student_loss',
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  config = demo_config(teacher_dir, **{'supernet.steps': 50,
                                   'supernet.base_lr': 2e-3})
  outcome = supernet_stage.run(config, epath.Path(tmp_path))
  assert len(traces) == 1  # 50 steps, a fresh subnet each, one compile.
  # The subnets the steps drew (re-derived as the trainer keys them) differ.
  step_key = jax.random.split(jax.random.key(config.seed))[1]
  space = config_lib.space_from_config(config)
  drawn = {space.decode(space.sample_encoded(jax.random.split(
      jax.random.fold_in(step_key, i))[0])) for i in range(50)}
  assert len(drawn) >= 10, len(drawn)
  records = [json.loads(l) for l in
             (tmp_path / 'supernet/metrics.jsonl').read_text().splitlines()]
  loss = [r['loss'] for r in records]
  assert np.mean(loss[-2:]) < 0.9 * np.mean(loss[:2]), loss
  assert {'pixel_loss', 'feature_loss'} <= set(records[-1])
  # The teacher is a constant of the step, not part of what is trained.
  assert set(outcome.params) == {'encoder', 'decoder', 'proj1', 'proj2'}
  # The trainer's own metrics: the schedule's rate at the step, and norms.
  last = records[-1]
  schedule = trainer.warmup_cosine(
      config.supernet.base_lr * config.supernet.batch_size / 512, 50, 0)
  assert last['lr'] == pytest.approx(float(schedule(49)), rel=1e-5)
  assert records[0]['lr'] == pytest.approx(float(schedule(
      records[0]['step'] - 1)), rel=1e-5)
  norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64)**2)
                     for x in jax.tree.leaves(outcome.params)))
  assert last['param_norm'] == pytest.approx(norm, rel=1e-5)
  assert 0 < last['grad_norm'] < float('inf')
  # The same scalars as TensorBoard events beside metrics.jsonl.
  scalars = read_scalars(tmp_path / 'supernet')
  for record in records:
    for key in ('loss', 'feature_loss', 'lr', 'grad_norm'):
      assert scalars[key][record['step']] == pytest.approx(record[key],
                                                           rel=1e-6)
  assert (tmp_path / 'supernet/loss.png').exists()


def test_a_step_moves_only_the_sampled_subnet(teacher_dir, tmp_path):
  config = demo_config(teacher_dir, **{'supernet.steps': 1})
  state = {'params': supernet_stage.run(config, epath.Path(tmp_path)).params}
  # Re-derive what the trainer drew: init key and step-0 subnet.
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  init = nnx.to_pure_dict(nnx.state(Student(
      config_lib.student_config(config, 192), rngs=nnx.Rngs(init_key)),
                                    nnx.Param))
  space = config_lib.space_from_config(config)
  arch = space.decode(space.sample_encoded(
      jax.random.split(jax.random.fold_in(step_key, 0))[0]))
  e, depth = arch.embed_dim, arch.depth
  before, after = init['encoder']['layers'], state['params']['encoder'][
      'layers']
  moved = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max())
  # Inside the subnet: trained.
  assert moved(before['w1'][0, :e, :arch.mlp_dims[0]],
               after['w1'][0, :e, :arch.mlp_dims[0]]) > 0
  # Outside it: untouched (no AdamW decay, no momentum).
  assert moved(before['w1'][:, e:], after['w1'][:, e:]) == 0
  assert moved(before['w1'][0, :, arch.mlp_dims[0]:],
               after['w1'][0, :, arch.mlp_dims[0]:]) == 0
  assert moved(before['wq'][depth:], after['wq'][depth:]) == 0
  assert moved(before['wq'][0, :, arch.num_heads[0]:],
               after['wq'][0, :, arch.num_heads[0]:]) == 0


def test_stopped_and_resumed_training_ends_where_one_run_does(
    teacher_dir, tmp_path, monkeypatch):
  config = demo_config(teacher_dir, **{'supernet.steps': 6,
                                   'checkpoint_every': 2})
  straight = supernet_stage.run(config, epath.Path(tmp_path / 'a'))
  interrupt_after(monkeypatch, 3)
  with pytest.raises(Interrupted):
    supernet_stage.run(config, epath.Path(tmp_path / 'b'))
  resumed = supernet_stage.run(config, epath.Path(tmp_path / 'b'))
  assert resumed.step == straight.step == 6
  for a, b in zip(jax.tree.leaves(straight.params),
                  jax.tree.leaves(resumed.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_missing_teacher_is_a_clear_error(tmp_path):
  config = demo_config('', **{'supernet.steps': 2})
  with pytest.raises(errors.TeacherError, match='run --config.mode=teacher'):
    supernet_stage.run(config, epath.Path(tmp_path))


def test_bfloat16_compute_keeps_float32_weights_and_close_losses():
  # One choice per gene: the dtypes are the point, not the branches.
  small = {'space.embed_dims': (32,), 'space.depths': (2,),
           'space.num_heads': (1,), 'space.mlp_ratios': (2.0,),
           'teacher.embed_dim': 64, 'teacher.depth': 2, 'teacher.num_heads': 1,
           'supernet.decoder_embed_dim': 32}
  teacher_model = MAE(config_lib.mae_config(demo_config('', **small)),
                      rngs=nnx.Rngs(0))
  batch = {'image': jax.random.normal(jax.random.key(0), (8, 32, 32, 3))}
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config = demo_config('', **small, **{'supernet.compute_dtype': dtype})
    task = supernet_stage.make_task(config, teacher_model, 10, 1, 16)
    prog = trainer.program(task)
    state = prog.init(jax.random.key(1), None)
    args = (state, batch, jax.random.key(3), task.constants)
    # Every matmul of teacher, student and backward runs in the compute dtype.
    assert helpers.matmul_dtypes(jax.make_jaxpr(prog.step)(*args).jaxpr) == {
        (dtype, dtype)}
    new_state, metrics = prog.step(*args)
    assert {x.dtype for x in jax.tree.leaves(new_state['params'])} == {
        np.dtype('float32')}
    results[dtype] = {k: float(v) for k, v in metrics.items()}
  for key in ('loss', 'pixel_loss', 'feature_loss'):
    assert results['bfloat16'][key] == pytest.approx(results['float32'][key],
                                                     rel=2e-2), key


def _np_ln(x):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean)**2).mean(-1, keepdims=True) + 1e-6)


def test_cls_target_scores_the_projected_cls_output_against_the_teacher():
  """supernet.cls_target: the loss gains beta x SmoothL1(LN(projected CLS),
  LN(target)), the target the teacher's CLS output or the mean of its
  visible patch tokens, against a float64 NumPy computation on the dense
  student of the step's Arch; the pixel and feature terms stay as they are
  without it."""
  small = {'space.embed_dims': (32, 48), 'space.depths': (2, 3),
           'space.num_heads': (1, 2), 'space.mlp_ratios': (2.0,),
           'teacher.embed_dim': 64, 'teacher.depth': 2, 'teacher.num_heads': 1,
           'supernet.decoder_embed_dim': 32, 'supernet.beta': 0.7}
  base = demo_config('', **small)
  teacher_model = MAE(config_lib.mae_config(base), rngs=nnx.Rngs(0))
  teacher_def, teacher_state = nnx.split(teacher_model.encoder)
  space = config_lib.space_from_config(base)
  arch = space.sample(np.random.default_rng(2))
  constants = {'teacher': nnx.to_pure_dict(teacher_state),
               'arch': space.encode(arch)}
  student = Student(config_lib.student_config(base, 64), rngs=nnx.Rngs(1))
  student_def, params, fixed = nnx.split(student, nnx.Param, ...)
  params, fixed = nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  rng = jax.random.key(5)
  # The step's masking, as make_loss draws it.
  ids_keep, _, ids_restore = random_masking(
      jax.random.split(rng)[1], 4, space.num_patches, base.supernet.mask_ratio)
  dense = student.extract(arch)
  cls_out = np.asarray(dense(images, ids_keep, ids_restore, cls=True)[1][:, 0],
                       np.float64)
  teacher_tokens = np.asarray(teacher_model.encode(images, ids_keep),
                              np.float64)
  terms = {}
  for target in ('none', 'teacher_cls', 'teacher_mean'):
    config = demo_config('', **small, **{'supernet.cls_target': target})
    loss = supernet_stage.make_loss(config, student_def, teacher_def)
    total, terms[target] = loss(params, fixed, {'image': images}, rng,
                                constants)
    extra = 0.0
    if target != 'none':
      want = (teacher_tokens[:, 0] if target == 'teacher_cls'
              else teacher_tokens[:, 1:].mean(1))
      d = np.abs(_np_ln(cls_out) - _np_ln(want))
      expected = np.where(d < 1, 0.5 * d * d, d - 0.5).mean()
      assert float(terms[target]['cls_loss']) == pytest.approx(expected,
                                                               rel=1e-4)
      extra = 0.7 * float(terms[target]['cls_loss'])
    else:
      assert 'cls_loss' not in terms[target]
    for key in ('pixel_loss', 'feature_loss'):
      assert float(terms[target][key]) == pytest.approx(
          float(terms['none'][key]), rel=1e-6), (target, key)
    assert float(total) == pytest.approx(
        float(terms[target]['pixel_loss']) +
        0.7 * float(terms[target]['feature_loss']) + extra, rel=1e-6)
  # Two different targets: the term is not the same number twice.
  assert abs(float(terms['teacher_cls']['cls_loss']) -
             float(terms['teacher_mean']['cls_loss'])) > 1e-3


def test_views_of_one_image_share_its_pixels_and_differ_in_their_masks():
  """supernet.views_per_image = 2: a batch of 4 images is the step's 8 views,
  each image twice in adjacent rows with masks of their own; the loss is the
  one of the 8-image batch holding each image twice."""
  small = {'space.embed_dims': (32,), 'space.depths': (2,),
           'space.num_heads': (1,), 'space.mlp_ratios': (2.0,),
           'teacher.embed_dim': 64, 'teacher.depth': 2, 'teacher.num_heads': 1,
           'supernet.decoder_embed_dim': 32}
  base = demo_config('', **small)
  teacher_model = MAE(config_lib.mae_config(base), rngs=nnx.Rngs(0))
  teacher_def, teacher_state = nnx.split(teacher_model.encoder)
  student = Student(config_lib.student_config(base, 64), rngs=nnx.Rngs(1))
  student_def, params, fixed = nnx.split(student, nnx.Param, ...)
  params, fixed = nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)
  constants = {'teacher': nnx.to_pure_dict(teacher_state)}
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  seen = []

  def forward(model, x, arch, ids_keep, ids_restore):
    seen.append((np.asarray(x), np.asarray(ids_keep)))
    return model(x, arch, ids_keep, ids_restore)

  results = []
  for views, batch in ((2, images), (1, np.repeat(images, 2, axis=0))):
    config = demo_config('', **small,
                         **{'supernet.views_per_image': views})
    loss = supernet_stage.make_loss(config, student_def, teacher_def,
                                    forward=forward)
    results.append(loss(params, fixed, {'image': batch}, jax.random.key(5),
                        constants))
  pixels, keep = seen[0]
  assert pixels.shape[0] == keep.shape[0] == 8
  for i in range(4):
    np.testing.assert_array_equal(pixels[2 * i], pixels[2 * i + 1])
    np.testing.assert_array_equal(pixels[2 * i], images[i])
    assert set(keep[2 * i]) != set(keep[2 * i + 1])
  np.testing.assert_array_equal(seen[0][1], seen[1][1])
  assert float(results[0][0]) == float(results[1][0])
  # view_flips: each view the image or its mirror, by a coin of its own;
  # the masks as without it.
  many = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
  seen.clear()
  for flips in (False, True):
    config = demo_config('', **small, **{'supernet.views_per_image': 2,
                                         'supernet.view_flips': flips})
    supernet_stage.make_loss(config, student_def, teacher_def,
                             forward=forward)(
                                 params, fixed, {'image': many},
                                 jax.random.key(5), constants)
  (plain, plain_keep), (flipped, flipped_keep) = seen
  np.testing.assert_array_equal(plain_keep, flipped_keep)
  mirrored = []
  for v in range(32):
    same = np.array_equal(flipped[v], plain[v])
    mirror = np.array_equal(flipped[v], plain[v][:, ::-1])
    assert same or mirror, v
    mirrored.append(mirror)
  pairs = [(mirrored[2 * i], mirrored[2 * i + 1]) for i in range(16)]
  # Both orientations occur, and the two views of an image are mirrored
  # independently (some pairs differ): 2^-16-scale odds against each.
  assert 0 < sum(mirrored) < 32
  assert any(a != b for a, b in pairs) and any(a == b for a, b in pairs)


def test_views_per_image_reads_fewer_images_a_step():
  """The input decodes batch_size / views_per_image images a step; epochs
  and warm-up count views, so the schedule does not depend on the views."""
  schedule = {}
  for views in (1, 2):  # 8 fake devices: 8 images a step at the least.
    config = demo_config('', **{'supernet.views_per_image': views,
                                'supernet.steps': 0, 'supernet.epochs': 2,
                                'supernet.warmup_epochs': 1.0})
    batches, steps, warmup = data.training_input(
        config.data, config.supernet, 'supernet', config.space.image_size, 0)
    assert next(iter(batches))['image'].shape[0] == 16 // views
    schedule[views] = steps, warmup
  images = len(data.get_source(config.data, config.data.train_split,
                                config.space.image_size))
  per_epoch = images / config.supernet.batch_size  # In views.
  assert schedule[1] == schedule[2] == (math.ceil(2 * per_epoch),
                                        round(per_epoch))
