"""Label-free signals of a subnet, per image: the search's fitness variants
(`search.fitness`) and the controls mode=rank reports beside them.

Each is computed from one masked batch (the teacher's tokens made once,
`fitness.teacher_features_fn`) and the subnet's supernet tokens, higher
meaning better:

* 'relation': the relation consistency with the teacher on the visible
  tokens (eq. 13-16, `losses.Relation` as the config sets it);
* 'relation_paper': the same in the paper's literal form (raw dot products,
  the self-relation kept) at the config's temperature, a reference;
* 'relation_all': the configured relation on every patch token, none
  masked (more tokens than training's mask leaves);
* 'feature': minus the supernet's own feature-prediction loss (eq. 11) on
  the visible tokens under the training mask: what the supernet learned to
  do, teacher-dependent by construction;
* 'pixel': minus the pixel-reconstruction loss (eq. 10) of the removed
  patches through the student's decoder;
* 'student_entropy': the student's relation-map entropy (no teacher), a
  control;
* 'fusion' (a fitness, not a signal): the mean of the 'relation' and
  'pixel' z-scores among reference subnets (BWSS-TAS fuses teacher-student
  consistency with reconstruction quality by rank; standardised scores
  keep telling apart candidates better than every reference subnet, where
  ranks among a small reference saturate);
* 'relation_params' (a fitness): the mean of the 'relation' and parameter
  count z-scores, the same way: size as a prior (the strongest single
  predictor of many ranking studies, and of the signal study's first seed),
  the relation consistency to tell apart subnets of like size.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from masktas_jax import losses
from masktas_jax.masking import patchify

SIGNALS = ('relation', 'relation_paper', 'relation_all', 'feature', 'pixel',
           'student_entropy')
FITNESSES = ('relation', 'relation_paper', 'relation_all', 'feature', 'pixel',
             'fusion', 'relation_params')
# The fitnesses that average z-scores, and of what: signals, or 'params'
# (the subnet's parameter count, `size_values`).
FUSIONS = {'fusion': ('relation', 'pixel'),
           'relation_params': ('relation', 'params')}
# Random window subnets the search standardises a fusion against.
FUSION_REFERENCE = 32
# Signals that read the student's decoder or projector, not only the
# encoder.
NEEDS_HEADS = ('feature', 'pixel')


def needed(fitness: str) -> tuple[str, ...]:
  """The signals a search by `fitness` computes: its own (or the signals
  it fuses), then the student-entropy control."""
  if fitness not in FITNESSES:
    raise ValueError(f'search.fitness: expected one of {FITNESSES}, got '
                     f'{fitness!r}')
  own = tuple(n for n in FUSIONS.get(fitness, (fitness,)) if n in SIGNALS)
  return own + ('student_entropy',)


def size_values(space, archs) -> dict[str, np.ndarray]:
  """{'params': (P,)} the parameter counts of `archs`, the non-signal
  input of a fusion."""
  return {'params': np.array([space.count_params(a) for a in archs],
                             np.float64)}


def paper_relation(relation: losses.Relation) -> losses.Relation:
  """The paper's literal relation maps (eq. 16: raw dot products, every
  token including itself) at `relation`'s temperature."""
  return losses.Relation(form='dot', tau=relation.tau, exclude_self=False)


def pixel_loss_per_image(pred: jax.Array, target: jax.Array,
                         mask: jax.Array, norm_pix: bool) -> jax.Array:
  """Eq. 10 per image: (B, N, P) predicted and true patches, (B, N) mask
  (1 = removed) -> (B,) mean squared error over each image's removed
  patches."""
  if norm_pix:
    target = losses.normalize_patches(target)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target)**2, axis=-1)
  return jnp.sum(per_patch * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1)


def feature_loss_per_image(z_student: jax.Array,
                           z_teacher: jax.Array) -> jax.Array:
  """Eq. 11 per image: (B, T, D) projected student and teacher tokens ->
  (B,) SmoothL1 of their non-affine layer norms, mean over tokens and
  channels."""
  return jnp.mean(losses.smooth_l1(losses.layer_norm_no_affine(z_student),
                                   losses.layer_norm_no_affine(z_teacher)),
                  axis=(1, 2))


def compute(names: Sequence[str], relation: losses.Relation, batch: dict,
            tokens: jax.Array, tokens_all: jax.Array | None = None,
            heads: Any = None, *, patch_size: int = 0,
            norm_pix: bool = True) -> jax.Array:
  """The signals `names` of one subnet, per image: (B, len(names)).

  Args:
    names: signals (SIGNALS) in the order wanted.
    relation: the configured relation maps.
    batch: a prepared batch (`fitness.teacher_features_fn`): 'image'
      (B, S, S, C), 'z_teacher' (B, K, D_t), and as the names need them
      'z_teacher_all' (B, N, D_t), 'ids_restore' (B, N), 'mask' (B, N).
    tokens: (B, 1 + K, E) the subnet's final-normed tokens of the visible
      patches, CLS first, max width E (channels past its own zero).
    tokens_all: (B, 1 + N, E) the same with nothing masked ('relation_all').
    heads: the `models.student.Student` whose decoder and projector read
      the tokens ('feature', 'pixel').
    patch_size: for 'pixel'; norm_pix: eq. 10's normalised targets.
  """
  patches = tokens[:, 1:]
  out = []
  for name in names:
    if name == 'relation':
      value = relation.fitness(batch['z_teacher'], patches)
    elif name == 'relation_paper':
      value = paper_relation(relation).fitness(batch['z_teacher'], patches)
    elif name == 'relation_all':
      value = relation.fitness(batch['z_teacher_all'], tokens_all[:, 1:])
    elif name == 'student_entropy':
      value = relation.student_entropy(patches)
    elif name == 'feature':
      value = -feature_loss_per_image(
          heads.project(patches).astype(jnp.float32), batch['z_teacher'])
    elif name == 'pixel':
      pred = heads.decoder(tokens, batch['ids_restore'])
      value = -pixel_loss_per_image(
          pred, patchify(batch['image'], patch_size), batch['mask'],
          norm_pix)
    else:
      raise ValueError(f'signal: expected one of {SIGNALS}, got {name!r}')
    out.append(value.astype(jnp.float32))
  return jnp.stack(out, -1)


def zscores(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """(P,) values -> (P,) in standard deviations of `reference` (R,) from
  its mean (0 where the reference is constant)."""
  reference = np.asarray(reference, np.float64)
  std = reference.std()
  centred = np.asarray(values, np.float64) - reference.mean()
  return centred / std if std > 0 else np.zeros_like(centred)


def fuse(signals: dict[str, np.ndarray], reference: dict[str, np.ndarray],
         fitness: str) -> np.ndarray:
  """(P,) the fusion `fitness` (FUSIONS): the mean over what it fuses of
  each one's `zscores` among the reference subnets' values of it.
  signals, reference: name -> (P,), (R,), 'params' included where fused."""
  return np.mean([zscores(signals[n], reference[n])
                  for n in FUSIONS[fitness]], 0)
