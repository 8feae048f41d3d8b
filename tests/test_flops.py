"""The analytic FLOP model against the matrix products the models trace."""

import jax
import numpy as np
import pytest
from flax import nnx

from masktas_jax import config_lib
from masktas_jax.compilation import flops
from masktas_jax.masking import random_masking
from masktas_jax.models.mae import MAE
from masktas_jax.models.student import Student
from masktas_jax.training import finetuning
from helpers import search_config


def _matmul_flops(jaxpr) -> int:
  """2 x multiply-accumulates of every dot_general in `jaxpr`, sub-jaxprs
  (jit, remat, custom derivatives) included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * int(np.prod(out)) * int(np.prod([lhs[d]
                                                    for d in contract]))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None:
          total += _matmul_flops(getattr(inner, 'jaxpr', inner))
  return total


def test_step_flops_are_the_traced_matrix_products():
  """Teacher and dense student forwards, traced on the step's shapes: their
  matmul FLOPs are the model's parts (the student's x3 for the backward)."""
  config = search_config()
  space = config_lib.space_from_config(config)
  model = flops.SupernetStep(
      config_lib.student_config(config, config.teacher.embed_dim),
      config_lib.mae_config(config), config.supernet.mask_ratio)
  batch = 4
  images = jax.random.normal(jax.random.key(0), (batch, space.image_size,
                                                 space.image_size, 3))
  ids_keep, _, ids_restore = random_masking(
      jax.random.key(1), batch, space.num_patches, config.supernet.mask_ratio)
  teacher = MAE(config_lib.mae_config(config), rngs=nnx.Rngs(0))
  teacher_flops = _matmul_flops(jax.make_jaxpr(
      lambda x: teacher.encode(x, ids_keep))(images).jaxpr)
  student = Student(config_lib.student_config(
      config, teacher.config.embed_dim), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  for arch in [space.min_arch(), space.max_arch(), space.sample(rng)]:
    parts = model.parts(arch, batch)
    assert parts['teacher'] == teacher_flops
    dense = student.extract(arch)
    traced = _matmul_flops(jax.make_jaxpr(
        lambda x: dense(x, ids_keep, ids_restore))(images).jaxpr)
    assert parts['encoder'] + parts['decoder'] + parts['projector'] == (
        3 * traced), arch
    assert model(arch, batch) == pytest.approx(sum(parts.values()))


def test_teacher_and_finetune_steps_are_the_traced_matrix_products():
  config = search_config()
  space = config_lib.space_from_config(config)
  batch = 2
  images = jax.random.normal(jax.random.key(0), (batch, space.image_size,
                                                 space.image_size, 3))
  teacher = MAE(config_lib.mae_config(config), rngs=nnx.Rngs(0))
  traced = _matmul_flops(jax.make_jaxpr(lambda x: teacher(
      x, jax.random.key(1), config.teacher.mask_ratio)[0])(images).jaxpr)
  assert flops.mae_step(teacher.config, config.teacher.mask_ratio,
                        batch) == 3 * traced
  rng = np.random.default_rng(1)
  for arch in [space.min_arch(), space.sample(rng)]:
    classifier = finetuning.build_classifier(space, arch, space.num_classes,
                                             0.0, nnx.Rngs(2))
    traced = _matmul_flops(jax.make_jaxpr(classifier)(images).jaxpr)
    assert flops.finetune_step(space, arch, batch) == 3 * traced, arch
