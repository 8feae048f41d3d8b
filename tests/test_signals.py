"""The fitness variants (search.fitness) and rank's signals, against their
definitions computed on the dense extracted subnet in float64 NumPy."""

import json

import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx
from scipy import stats

from masktas_jax import config_lib, data, losses
from masktas_jax.errors import SearchError
from masktas_jax.evaluation import fitness, ranking, signals
from masktas_jax.masking import patchify, random_masking
from masktas_jax.models import supernet, vit
from masktas_jax.stages import search
from masktas_jax.storage import artifacts, model_dirs
from helpers import eval_batches, search_config


def _np_ln(x):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean)**2).mean(-1, keepdims=True) + 1e-6)


def _np_feature_loss(zs, zt):
  d = np.abs(_np_ln(zs) - _np_ln(zt))
  return np.where(d < 1, 0.5 * d * d, d - 0.5).mean((1, 2))


def _np_pixel_loss(pred, target, mask):
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, ddof=1, keepdims=True)
  target = (target - mean) / np.sqrt(var + 1e-6)
  per_patch = ((pred - target)**2).mean(-1)
  return (per_patch * mask).sum(-1) / mask.sum(-1)


def _models(config, workdir):
  """(student, teacher) of the test workdir."""
  space = config_lib.space_from_config(config)
  return (model_dirs.load_student(
      artifacts.model_dir(epath.Path(workdir), 'supernet'), space),
          model_dirs.load_teacher(
              artifacts.model_dir(epath.Path(workdir), 'teacher'), space))


def _reference(config, workdir, archs, batches, relation, mask_ratio, seed):
  """Each signal of each Arch, per image through its dense student, the
  masks drawn as the scorer draws them: {name: (P,)} means over images."""
  student, teacher = _models(config, workdir)
  space = config_lib.space_from_config(config)
  paper = losses.Relation('dot', relation.tau, exclude_self=False)
  f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
  out = {n: [] for n in signals.SIGNALS}
  for arch in archs:
    dense = student.extract(arch)
    per_image = {n: [] for n in signals.SIGNALS}
    for i, batch in enumerate(batches):
      valid = batch['valid']
      images = data.prepare(batch)['image']
      ids_keep, mask, ids_restore = random_masking(
          jax.random.fold_in(jax.random.key(seed), i), images.shape[0],
          space.num_patches, mask_ratio)
      pixels, feats = dense(images, ids_keep, ids_restore)
      tokens = dense.encoder.encode(images, ids_keep)[:, 1:]
      tokens_all = dense.encoder.encode(images)[:, 1:]
      zt = teacher.encode(images, ids_keep)[:, 1:]
      zt_all = teacher.encode(images)[:, 1:]
      values = {
          'relation': relation.fitness(zt, tokens),
          'relation_paper': paper.fitness(zt, tokens),
          'relation_all': relation.fitness(zt_all, tokens_all),
          'student_entropy': relation.student_entropy(tokens),
          'feature': -_np_feature_loss(f64(feats), f64(zt)),
          'pixel': -_np_pixel_loss(f64(pixels), f64(patchify(
              images, space.patch_size)), f64(mask))}
      for n, v in values.items():
        per_image[n].append(f64(v)[valid])
    for n in signals.SIGNALS:
      out[n].append(np.concatenate(per_image[n]).mean())
  return {n: np.array(v) for n, v in out.items()}


@pytest.mark.parametrize('strategy', ['vmap', 'map'])
def test_every_signal_equals_its_definition_on_the_dense_subnet(
    workdir, strategy):
  config = search_config()
  space = config_lib.space_from_config(config)
  student, teacher = _models(config, workdir)
  batches = eval_batches(config, 'train', 20, 8, seed=0)
  relation = losses.Relation('centered_cosine', 0.2)
  scorer = fitness.PopulationScorer(
      student.encoder, teacher, space, batches, relation=relation,
      mask_ratio=0.75, seed=3, capacity=4, strategy=strategy,
      names=signals.SIGNALS, student=student)
  archs = [space.sample(np.random.default_rng(i)) for i in range(5)]
  got = scorer.signals(archs)
  want = _reference(config, workdir, archs, batches, relation, 0.75, 3)
  for name in signals.SIGNALS:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                               err_msg=name)
    # Each tells the subnets apart.
    assert np.ptp(got[name]) > 1e-4, name
  # The losses are positive: their signals negative.
  assert np.all(got['feature'] < 0) and np.all(got['pixel'] < 0)
  # One Arch alone through the switch path gives the same fitness.
  assert scorer.score_alone(archs[0]) == pytest.approx(got['relation'][0],
                                                       rel=1e-5)


@pytest.mark.parametrize('name', ['fusion', 'relation_params'])
def test_a_fusion_averages_the_zscores_of_what_it_fuses(workdir, name):
  reference = np.array([0.3, -1.0, 0.3, 2.0, 0.1])
  mean, std = reference.mean(), reference.std()
  np.testing.assert_allclose(signals.zscores([-5.0, 5.0, mean], reference),
                             [(-5.0 - mean) / std, (5.0 - mean) / std, 0.0])
  # Beyond every reference value, still apart.
  assert signals.zscores([5.0], reference) > signals.zscores([3.0],
                                                               reference)
  np.testing.assert_array_equal(signals.zscores([1.0, 2.0], np.ones(4)), 0)
  config = search_config()
  space = config_lib.space_from_config(config)
  student, teacher = _models(config, workdir)
  scorer = fitness.PopulationScorer(
      student.encoder, teacher, space,
      eval_batches(config, 'train', 16, 8, seed=0),
      relation=losses.Relation(), mask_ratio=0.75, seed=0, capacity=6,
      names=signals.needed(name), fitness=name, student=student)
  # Only the signals it fuses (and the control) are computed: parameter
  # counts come from the space.
  assert scorer.names == {'fusion': ('relation', 'pixel', 'student_entropy'),
                          'relation_params': ('relation',
                                              'student_entropy')}[name]
  archs = [space.sample(np.random.default_rng(i)) for i in range(6)]
  with pytest.raises(ValueError, match='calibrate'):
    scorer(archs)
  scorer.calibrate(archs[:4])
  values = scorer.signals(archs)
  # Parameter counts of the dense classifiers extracted from a supernet of
  # the space (what the window counts), independent of its closed form.
  classifier = supernet.Supernet(space, rngs=nnx.Rngs(0))
  values['params'] = np.array(
      [vit.count_params(classifier.extract(a)) for a in archs], float)
  z = [(values[n] - values[n][:4].mean()) / values[n][:4].std()
       for n in signals.FUSIONS[name]]
  np.testing.assert_allclose(scorer(archs), (z[0] + z[1]) / 2, rtol=1e-6)
  assert scorer.score_alone(archs[5]) == pytest.approx(
      (z[0][5] + z[1][5]) / 2, rel=1e-5, abs=1e-6)
  with pytest.raises(ValueError, match='need the student'):
    fitness.PopulationScorer(
        student.encoder, teacher, space,
        eval_batches(config, 'train', 8, 8, seed=0),
        relation=losses.Relation(), mask_ratio=0.75, seed=0, capacity=2,
        names=signals.needed('pixel'), fitness='pixel')


@pytest.mark.parametrize('name', ['fusion', 'relation_params'])
def test_a_search_by_another_fitness_runs_and_will_not_resume_with_this_one(
    workdir, tmp_path, name):
  config = search_config(**{'search.fitness': name})
  config.search.supernet = str(
      artifacts.model_dir(epath.Path(workdir), 'supernet'))
  config.teacher.checkpoint = str(epath.Path(workdir) / 'teacher' / 'model')
  best = search.run(config, epath.Path(tmp_path))
  assert best['fitness_variant'] == name and np.isfinite(best['fitness'])
  saved = json.loads((tmp_path / 'search/best_arch.json').read_text())
  assert saved == best
  config.search.fitness = 'relation'
  config.search.generations += 1
  with pytest.raises(SearchError, match='config.search.fitness'):
    search.run(config, epath.Path(tmp_path))


def test_an_unknown_fitness_is_refused():
  with pytest.raises(config_lib.ConfigError, match='config.search.fitness'):
    search_config(**{'search.fitness': 'relations'})


def test_kendall_within_parameter_strata_ignores_what_size_explains():
  rng = np.random.default_rng(0)
  size = np.arange(30.0)
  noise = rng.normal(size=30)
  # Accuracy that steps with size between the strata and is noise within
  # them: size ranks well overall and at chance within strata, where the
  # noise ranks perfectly.
  accuracy = 3 * (size // 10) + 0.5 * noise
  by_size = ranking.kendall_within_strata(size, accuracy, size, strata=3)
  assert abs(by_size['kendall_tau']) < 0.35
  assert stats.kendalltau(size, accuracy).statistic > 0.5
  by_noise = ranking.kendall_within_strata(noise, accuracy, size, strata=3)
  want = np.mean([stats.kendalltau(noise[g], accuracy[g]).statistic
                  for g in (slice(0, 10), slice(10, 20), slice(20, 30))])
  assert by_noise['kendall_tau'] == pytest.approx(want) == 1.0
  lo, hi = by_noise['kendall_ci']
  assert lo - 1e-9 <= by_noise['kendall_tau'] <= hi + 1e-9
  assert by_noise['strata'] == 3
