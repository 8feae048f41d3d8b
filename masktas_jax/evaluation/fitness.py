"""The label-free fitness of subnets (paper eq. 13-16), for search and rank.

`PopulationScorer` rates a whole population of Archs of the trained
supernet at once by the consistency of their token relations with the
frozen teacher's on the same visible patches (`losses.Relation`), averaged
over a fixed set of masked evaluation images whose teacher features are
computed once. `mode=search` evolves Archs with it; `mode=rank` checks it
against labels.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from masktas_jax import data, losses, parallel, settings
from masktas_jax.evaluation import evaluator, signals
from masktas_jax.masking import random_masking
from masktas_jax.space import Arch, SearchSpace
from masktas_jax.storage import artifacts, model_dirs


# How one compiled call covers a population: 'vmap' runs the supernet's
# `mask` path (max width) vmapped over the candidates, large matmuls that
# suit accelerators; 'map' loops over them inside the call on the `switch`
# path, each at its own subnet's FLOPs, which suits CPUs.
STRATEGIES = settings.SCORING_STRATEGIES
# The supernet path each strategy runs its candidates on.
ENCODE_MODES = {'vmap': 'mask', 'map': 'switch'}


def resolve_strategy(strategy: str) -> str:
  """'auto' -> 'map' on CPU, else 'vmap'; anything else must be one of
  STRATEGIES."""
  if strategy == 'auto':
    return 'map' if jax.default_backend() == 'cpu' else 'vmap'
  if strategy not in STRATEGIES:
    raise ValueError(f'config.search.scoring: expected one of '
                     f"{('auto',) + STRATEGIES}, got {strategy!r}")
  return strategy


def over_population(one, archs, strategy: str):
  """`one(arch)` for each of the stacked encoded `archs`, stacked: vmapped
  ('vmap') or looped inside the call ('map')."""
  return jax.vmap(one)(archs) if strategy == 'vmap' else jax.lax.map(
      one, archs)


# The search's default signals: the relation fitness and its control.
DEFAULT_SIGNALS = ('relation', 'student_entropy')


def teacher_features_fn(teacher_def, space: SearchSpace,
                        relation: losses.Relation, mask_ratio: float,
                        names: Sequence[str] = DEFAULT_SIGNALS):
  """`fn(teacher_state, batch, rng)` for an `evaluator.Evaluator`: masks a
  batch of B images (`rng`) and computes what scoring the signals `names`
  reads of it, once: {'image', 'valid', 'ids_keep' (B, K), 'z_teacher'
  (B, K, D_t) the teacher's visible patch tokens, 'entropy' (B,) its
  relation maps' mean row entropy (0 where not valid)}, plus 'mask' and
  'ids_restore' (B, N) for 'pixel', 'z_teacher_all' (B, N, D_t), every
  patch's, for 'relation_all'."""

  def prepare(teacher_state, batch, rng):
    images, valid = batch['image'], batch['valid']
    ids_keep, mask, ids_restore = random_masking(
        rng, images.shape[0], space.num_patches, mask_ratio)
    teacher = nnx.merge(teacher_def, teacher_state)
    z_teacher = teacher.encode(images, ids_keep)[:, 1:]
    out = {'image': images, 'valid': valid, 'ids_keep': ids_keep,
           'z_teacher': z_teacher,
           'entropy': jnp.where(valid, relation.teacher_entropy(z_teacher),
                                0.0)}
    if 'pixel' in names:
      out.update(mask=mask, ids_restore=ids_restore)
    if 'relation_all' in names:
      out['z_teacher_all'] = teacher.encode(images)[:, 1:]
    return out

  return prepare


def population_fn(model_def, relation: losses.Relation, strategy: str,
                  width: int | None = None,
                  names: Sequence[str] = DEFAULT_SIGNALS, *,
                  patch_size: int = 0, norm_pix: bool = True):
  """`fn((model_state, archs), batch, rng)` for an `evaluator.Evaluator`:
  (P, len(names)) the signals `names` (`signals.SIGNALS`) of the P stacked
  encoded `archs`, summed over the images of one prepared batch
  (`teacher_features_fn`'s output, without 'entropy'), by `strategy`
  (STRATEGIES); 'vmap' at static embed `width` (None: the max) for Archs
  no wider. `model_def` is the supernet encoder's, or the whole student's
  when a signal reads its decoder or projector (signals.NEEDS_HEADS)."""
  mode = ENCODE_MODES[strategy]
  at = {'width': width} if width else {}
  heads = any(n in signals.NEEDS_HEADS for n in names)

  def score(inputs, batch, _):
    model_state, archs = inputs
    model = nnx.merge(model_def, model_state)
    encoder = model.encoder if heads else model

    def one(arch):
      tokens = encoder.encode(batch['image'], arch, batch['ids_keep'],
                              mode=mode, **at)
      tokens_all = (encoder.encode(batch['image'], arch, mode=mode, **at)
                    if 'relation_all' in names else None)
      per_image = signals.compute(
          names, relation, batch, tokens, tokens_all,
          model if heads else None, patch_size=patch_size, norm_pix=norm_pix)
      return jnp.sum(jnp.where(batch['valid'][:, None], per_image, 0.0),
                     axis=0)

    return over_population(one, archs, strategy)

  return score


def capacity(search_config) -> int:
  """Archs the search scores at once: a generation's largest batch of new
  candidates (the first population, or the mutants and crossovers)."""
  s = search_config
  return max(s.population, s.mutations + s.crossovers)


def vmap_call_size(capacity_: int, space: SearchSpace) -> int:
  """Archs per 'vmap' call: the capacity's share per embed choice."""
  return -(-capacity_ // len(space.embed_dims))


def compiled_calls(capacity_: int, space: SearchSpace
                   ) -> list[tuple[str, int | None, int]]:
  """Every call a PopulationScorer of `capacity_` can compile, as
  (strategy, static embed width or None, Archs per call): 'map' takes the
  whole capacity at its own widths; 'vmap' a share of it per call at each
  embed width of the space (`PopulationScorer.buckets`)."""
  share = vmap_call_size(capacity_, space)
  return [('map', None, capacity_)] + [('vmap', e, share)
                                       for e in space.embed_dims]


def embed_chunks(archs: Sequence[Arch], size: int
                 ) -> list[tuple[int, list[int]]]:
  """`archs` sorted by embed dim and cut into calls of `size`: (the widest
  embed dim of the call, its indices). ceil(len / size) calls, padding only
  in the last."""
  order = sorted(range(len(archs)), key=lambda i: archs[i].embed_dim)
  calls = [order[lo:lo + size] for lo in range(0, len(order), size)]
  return [(max(archs[i].embed_dim for i in call), call) for call in calls]


class PopulationScorer:
  """Label-free fitness of many Archs at once on a fixed set of images.

  The teacher's features and the masks of every evaluation batch are made
  once, at construction, and stay on device (`batches`: dicts of 'image',
  'valid', 'ids_keep', 'z_teacher', split over the mesh). A call scores up
  to `capacity` Archs: their encodings are stacked (padded to `capacity`,
  so one compiled function serves every generation) and scored in one call
  per batch (`strategy`, see STRATEGIES; 'auto': 'map' on CPU, else
  'vmap'). `relation` says how relation maps are formed (losses.Relation).

  It computes the signals `names` (`signals.SIGNALS`; those reading the
  decoder or projector need the whole `student`, of which `encoder` is the
  supernet) and rates by `fitness` (`signals.FITNESSES`): one signal, or a
  fusion (`signals.FUSIONS`), z-scores among the reference subnets of
  `calibrate`.
  """

  def __init__(self, encoder, teacher, space: SearchSpace,
               batches: Sequence[dict[str, np.ndarray]], *,
               relation: losses.Relation, mask_ratio: float, seed: int,
               capacity: int, strategy: str = 'auto', mesh=None,
               names: Sequence[str] = DEFAULT_SIGNALS,
               fitness: str = 'relation', student=None,
               norm_pix: bool = True):
    strategy = resolve_strategy(strategy)
    self.space, self.capacity, self.relation = space, capacity, relation
    self.strategy, self.encoder = strategy, encoder
    self.names, self.fitness, self.norm_pix = tuple(names), fitness, norm_pix
    for name in signals.needed(fitness):
      if name not in self.names:
        raise ValueError(f'fitness {fitness!r} needs the signal {name!r}')
    heads = any(n in signals.NEEDS_HEADS for n in self.names)
    if heads and student is None:
      raise ValueError(f'signals {self.names} need the student (decoder and '
                       'projector), not only its encoder')
    self.reference = None
    self.mesh = mesh or parallel.make_mesh()
    self.encoder_def = nnx.graphdef(encoder)
    self.model_def, model_state = nnx.split(student if heads else encoder)
    teacher_def, teacher_state = nnx.split(teacher)
    prepare = evaluator.Evaluator(
        teacher_features_fn(teacher_def, space, relation, mask_ratio,
                            self.names),
        self.mesh, sharded_outputs=True)
    self.batches = list(prepare.map(
        ({'image': b['image'], 'valid': b['valid']} for b in batches),
        prepare.place(nnx.to_pure_dict(teacher_state)), seed))
    self.model_state = prepare.place(nnx.to_pure_dict(model_state))
    # The encoder's part of the student's state: not a second copy.
    self.encoder_state = (self.model_state['encoder'] if heads
                          else self.model_state)
    # Over every process's share.
    self.num_images = int(sum(jax.device_get(
        [jnp.sum(b['valid']) for b in self.batches])))
    # Mean row entropy of the teacher's maps as a fraction of its maximum.
    self.teacher_entropy = float(sum(jax.device_get(
        [jnp.sum(b.pop('entropy')) for b in self.batches]))) / max(
            self.num_images, 1)
    self._scorers = {}

  def _scorer(self, strategy: str, alone: bool = False,
              width: int | None = None) -> evaluator.Evaluator:
    """The jitted scoring of stacked Archs by `strategy` (at static embed
    `width` for 'vmap' buckets), made once (and once more for single Archs,
    `alone`, so each counts its own traces)."""
    if (strategy, alone, width) not in self._scorers:
      self._scorers[strategy, alone, width] = evaluator.Evaluator(
          population_fn(self.model_def, self.relation, strategy, width,
                        self.names, patch_size=self.space.patch_size,
                        norm_pix=self.norm_pix),
          self.mesh)
    return self._scorers[strategy, alone, width]

  @property
  def traces(self) -> int:
    """How often any one of the population scoring functions was traced
    (compiled): 1 however many generations ran."""
    return max([f.traces for (strategy, alone, _), f in self._scorers.items()
                if strategy == self.strategy and not alone] or [0])

  def _call_size(self, width: int | None) -> int:
    """Archs per compiled call: `capacity`, or its share per embed width."""
    return self.capacity if width is None else vmap_call_size(
        self.capacity, self.space)

  def buckets(self, archs: Sequence[Arch]) -> list[tuple[int | None,
                                                         list[int]]]:
    """How `evaluate` splits `archs`: (embed width or None, indices) per
    call. 'vmap' sorts them by embed dim and cuts them into calls of
    ceil(capacity / embed choices), each run at the widest embed dim it
    holds (max-width masks would cost the widest subnet's FLOPs for every
    candidate); 'map' takes `capacity` per call, each candidate at its own
    widths anyway."""
    if self.strategy != 'vmap':
      return [(None, list(range(lo, min(lo + self.capacity, len(archs)))))
              for lo in range(0, len(archs), self.capacity)]
    return embed_chunks(archs, self._call_size(self.space.embed_dims[0]))

  def signals(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
    """Each signal of `names`: (P,) its mean per image."""
    per_image = np.zeros((len(archs), len(self.names)))
    for width, indices in self.buckets(archs):
      chunk = [archs[i] for i in indices]
      padded = chunk + [chunk[-1]] * (self._call_size(width) - len(chunk))
      encoded = self.space.encode_batch(padded)
      per_image[indices] = self._scorer(self.strategy, width=width).sum(
          self.batches, (self.model_state, encoded))[:len(chunk)]
    per_image /= self.num_images
    return dict(zip(self.names, per_image.T))

  def calibrate(self, archs: Sequence[Arch]) -> None:
    """Scores `archs` as the reference subnets of a fusion's z-scores."""
    self.reference = {**self.signals(archs),
                      **signals.size_values(self.space, archs)}

  def rate(self, values: dict[str, np.ndarray],
           archs: Sequence[Arch]) -> np.ndarray:
    """(P,) the fitness of the P `archs`, whose `signals` are `values`
    (a fusion adds their `signals.size_values`)."""
    if self.fitness not in signals.FUSIONS:
      return values[self.fitness]
    if self.reference is None:
      raise ValueError(f'fitness {self.fitness!r} needs reference subnets: '
                       'call calibrate first')
    return signals.fuse({**values, **signals.size_values(self.space, archs)},
                        self.reference, self.fitness)

  def evaluate(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
    """((P,) fitness, (P,) student map entropy), each a mean per image; the
    entropy (a fraction of its maximum) needs no teacher: the control that
    the fitness must beat."""
    values = self.signals(archs)
    return self.rate(values, archs), values['student_entropy']

  def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
    """(len(archs),) mean fitness per image; higher is better."""
    return self.evaluate(archs)[0]

  def score_alone(self, arch: Arch) -> float:
    """The same fitness for one Arch alone through the `switch` path (a
    check of the vectorised scorer, and the per-candidate baseline)."""
    total = self._scorer('map', alone=True).sum(
        self.batches, (self.model_state, self.space.encode_batch([arch])))
    values = dict(zip(self.names, total[0][:, None] / self.num_images))
    return float(self.rate(values, [arch])[0])

  def tokens(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
    """((n, K, D_t) teacher tokens, (P, n, K, max_embed) student tokens) of
    the n evaluation images' K visible patches, gathered to the host: what
    the fitness compares, for studies of other relation maps."""
    encoder_def = self.encoder_def

    def student(inputs, batch, _):  # pylint: disable=redefined-outer-name
      encoder_state, arch = inputs
      encoder = nnx.merge(encoder_def, encoder_state)
      return encoder.encode(batch['image'], arch, batch['ids_keep'],
                            mode='switch')[:, 1:], batch['valid']

    run = evaluator.Evaluator(student, self.mesh)
    gathered = evaluator.Evaluator(
        lambda _, batch, __: (batch['z_teacher'], batch['valid']), self.mesh)

    def valid_rows(outputs):
      # Fetched one batch at a time, as they come.
      return np.concatenate([np.asarray(z)[np.asarray(v)] for z, v in (
          jax.device_get(o) for o in outputs)])

    teacher = valid_rows(gathered.map(self.batches, None))
    students = np.stack([valid_rows(run.map(
        self.batches, (self.encoder_state, self.space.encode(a))))
                         for a in archs])
    return teacher, students


def load_scorer(scoring: settings.Scoring, workdir: epath.Path, capacity: int,
                relation: losses.Relation | None = None,
                names: Sequence[str] | None = None) -> PopulationScorer:
  """The search's scorer of `scoring`'s models, images and fitness;
  `relation` overrides its relation, `names` the signals computed
  (default: those the fitness needs)."""
  names = tuple(names or signals.needed(scoring.fitness))
  teacher, student = _models(scoring, workdir)
  batches = data.eval_batches(scoring.data, scoring.split,
                              scoring.space.image_size, scoring.images,
                              scoring.batch_size, scoring.seed + 2,
                              'search.batch_size')
  heads = any(n in signals.NEEDS_HEADS for n in names)
  return PopulationScorer(
      student.encoder, teacher, scoring.space, batches,
      relation=relation or scoring.relation, mask_ratio=scoring.mask_ratio,
      seed=scoring.seed + 3, capacity=capacity, strategy=scoring.strategy,
      names=names, fitness=scoring.fitness,
      student=student if heads else None, norm_pix=scoring.norm_pix)


def check_teacher_entropy(entropy: float) -> str | None:
  """A one-line warning when the teacher's relation maps are nearly one-hot
  or nearly uniform (mean row entropy below 0.1 or above 0.95 of log K),
  where they say little of the image; else None."""
  if entropy < 0.1:
    return (f'search: warning: the teacher\'s relation maps are nearly '
            f'one-hot (entropy {entropy:.3f} of its maximum); raise '
            'config.search.tau')
  if entropy > 0.95:
    return (f'search: warning: the teacher\'s relation maps are nearly '
            f'uniform (entropy {entropy:.3f} of its maximum); lower '
            'config.search.tau')
  return None


def load_models(scoring: settings.Scoring, workdir: epath.Path):
  """(supernet encoder, teacher) for search and ranking."""
  teacher, student = _models(scoring, workdir)
  return student.encoder, teacher


def _models(scoring: settings.Scoring, workdir: epath.Path):
  """(teacher, supernet student) the run reads, checked against its
  space."""
  return (model_dirs.load_teacher(artifacts.teacher_model(
      scoring.teacher, workdir), scoring.space),
          model_dirs.load_student(artifacts.supernet_model(
              scoring.supernet, workdir), scoring.space))
