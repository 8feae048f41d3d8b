"""mode=search: the vectorised scorer and the resumable evolution stage."""

import json
import shutil

import numpy as np
import pytest
from etils import epath

from masktas_jax import config_lib, data, errors, losses
from masktas_jax.errors import SearchError
from masktas_jax.evaluation import evaluator, fitness, ranking, signals
from masktas_jax.evaluation.window import Window
from masktas_jax.space import Arch
from masktas_jax.stages import rank, search, supernet as supernet_stage
from masktas_jax.storage import artifacts
from helpers import eval_batches, read_scalars, search_config


@pytest.mark.parametrize('strategy', ['vmap', 'map'])
def test_population_scorer_equals_scoring_each_alone_and_compiles_once(
    workdir, strategy):
  config = search_config()
  space = config_lib.space_from_config(config)
  encoder, teacher_model = fitness.load_models(config_lib.scoring(config),
                                   epath.Path(workdir))
  batches = eval_batches(config, 'train', 40, 16, seed=0)
  assert len(batches) == 3 and int(sum(b['valid'].sum() for b in batches)) == 40
  relation = losses.Relation('cosine', 0.2, 0.1, exclude_self=True)
  scorer = fitness.PopulationScorer(encoder, teacher_model, space, batches,
                                    relation=relation, mask_ratio=0.75, seed=0,
                                    capacity=5, strategy=strategy)
  rng = np.random.default_rng(0)
  for _ in range(2):  # Two "generations" of different Archs, one compile.
    archs = [space.sample(rng) for _ in range(7)]  # Two chunks, one padded.
    together, entropy = scorer.evaluate(archs)
    np.testing.assert_array_equal(together, scorer(archs))
    alone = np.array([scorer.score_alone(a) for a in archs])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    calls = scorer.buckets(archs)
    assert sorted(i for _, group in calls for i in group) == list(range(7))
    # Every call is one that compile mode compiles ahead of time.
    compiled = {(w, n) for s, w, n in fitness.compiled_calls(5, space)
                if s == strategy}
    assert {(w, scorer._call_size(w)) for w, _ in calls} <= compiled  # pylint: disable=protected-access
    if strategy == 'vmap':  # Sorted by embed dim, 3 (= ceil(5 / 2)) a call.
      assert [len(group) for _, group in calls] == [3, 3, 1]
      assert [width for width, _ in calls] == [
          max(archs[i].embed_dim for i in group) for _, group in calls]
      dims = [archs[i].embed_dim for _, group in calls for i in group]
      assert dims == sorted(dims)
    else:
      assert [len(group) for _, group in calls] == [5, 2]
  # Each compiled function (one per embed width for 'vmap') traced once.
  assert scorer.traces == 1
  # The fitness tells Archs apart.
  assert np.ptp(together) > 1e-4
  # Both are the losses' definitions on the tokens the scorer compares.
  z_teacher, z_students = scorer.tokens(archs)
  assert z_teacher.shape == (40, 16, 64) and z_students.shape[:3] == (7, 40,
                                                                      16)
  np.testing.assert_allclose(
      together, [relation.fitness(z_teacher, z).mean() for z in z_students],
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      entropy, [relation.student_entropy(z).mean() for z in z_students],
      rtol=1e-5, atol=1e-6)
  assert scorer.teacher_entropy == pytest.approx(
      float(relation.teacher_entropy(z_teacher).mean()), rel=1e-5)


def test_search_stays_in_the_window_and_resumes_to_the_same_result(
    workdir, tmp_path, monkeypatch):
  space = config_lib.space_from_config(search_config())
  rng = np.random.default_rng(1)
  params = sorted(space.count_params(space.sample(rng)) for _ in range(200))
  lo, hi = params[50] / 1e6, params[150] / 1e6
  config = search_config(**{'search.min_params_m': lo,
                            'search.max_params_m': hi})
  config.search.supernet = str(
      artifacts.model_dir(epath.Path(workdir), 'supernet'))
  config.teacher.checkpoint = str(epath.Path(workdir) / 'teacher' / 'model')

  straight = search.run(config, epath.Path(tmp_path / 'a'))
  out = tmp_path / 'a' / 'search'
  history = [json.loads(l) for l in
             (out / 'history.jsonl').read_text().splitlines()]
  window = Window.from_config(config.search)
  archs = [Arch.from_dict(h['arch']) for h in history]
  assert len(history) == len({a.to_json() for a in archs})  # No repeats.
  assert all(window.contains(space, a) and space.contains(a) for a in archs)
  assert max(h['fitness'] for h in history) == straight['fitness']
  assert {h['generation'] for h in history} == {0, 1, 2}
  assert json.loads((out / 'best_arch.json').read_text()) == straight
  for png in ('fitness.png', 'pareto.png'):
    assert (out / png).read_bytes()[:4] == b'\x89PNG'
  # TensorBoard: per generation, the best so far and the generation's mean.
  scalars = read_scalars(out)
  for g in (0, 1, 2):
    seen = [h['fitness'] for h in history if h['generation'] <= g]
    now = [h['fitness'] for h in history if h['generation'] == g]
    assert scalars['best_fitness'][g] == pytest.approx(max(seen), rel=1e-6)
    assert scalars['mean_fitness'][g] == pytest.approx(np.mean(now),
                                                       rel=1e-5)

  # Killed after its second generation: the next run picks up from there.
  calls = []
  original = fitness.PopulationScorer.__call__

  def dies_in_generation_3(self, archs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return original(self, archs)

  monkeypatch.setattr(fitness.PopulationScorer, '__call__',
                      dies_in_generation_3)
  with pytest.raises(KeyboardInterrupt):
    search.run(config, epath.Path(tmp_path / 'b'))
  monkeypatch.setattr(fitness.PopulationScorer, '__call__', original)
  state = json.loads((tmp_path / 'b/search/state.json').read_text())
  assert state['generation'] == 2
  resumed = search.run(config, epath.Path(tmp_path / 'b'))
  assert resumed == straight
  assert (tmp_path / 'b/search/history.jsonl').read_text() == (
      out / 'history.jsonl').read_text()
  # Finished: a rerun reads the result instead of searching again.
  assert search.run(config, epath.Path(tmp_path / 'b')) == straight
  # It says which relation maps it used and how sharp the teacher's were.
  assert straight['relation'] == {
      'form': config.search.relation, 'tau': config.search.tau,
      'student_tau': config.search.tau * config.search.student_tau_ratio,
      'exclude_self': config.search.exclude_self}
  assert 0 < straight['teacher_entropy'] < 1
  # Fitness under other relation maps does not compare: no resume with them.
  config.search.tau *= 2
  with pytest.raises(SearchError, match='config.search: the relation maps'):
    search.run(config, epath.Path(tmp_path / 'b'))


def test_the_teacher_entropy_warning_band():
  assert fitness.check_teacher_entropy(0.5) is None
  low = fitness.check_teacher_entropy(0.05)
  high = fitness.check_teacher_entropy(0.97)
  assert 'nearly one-hot (entropy 0.050' in low and 'raise' in low
  assert 'nearly uniform (entropy 0.970' in high and 'lower' in high
  assert '\n' not in low + high


def test_an_empty_window_is_refused_before_any_work(tmp_path):
  config = search_config(**{'search.min_params_m': 50.0,
                            'search.max_params_m': 60.0})
  with pytest.raises(SearchError, match='config.search'):
    search.run(config, epath.Path(tmp_path))
  assert not (tmp_path / 'search').exists()


def test_a_supernet_of_another_space_is_refused(workdir):
  config = search_config(**{'space.embed_dims': (32, 64)})
  with pytest.raises(errors.SupernetError,
                     match='config.space.embed_dims'):
    fitness.load_models(config_lib.scoring(config),
                                   epath.Path(workdir))
  # The supernet stage does not skip over a supernet/model of another space.
  config.search.supernet = ''
  with pytest.raises(errors.SupernetError, match='config.space.embed_dims'):
    supernet_stage.run(config, epath.Path(workdir))


def test_an_exported_supernet_is_skipped_over_without_its_teacher(
    workdir, tmp_path):
  """The teacher is looked up only when training needs it."""
  shutil.copytree(artifacts.model_dir(epath.Path(workdir), 'supernet'),
                  artifacts.model_dir(epath.Path(tmp_path), 'supernet'))
  config = search_config()
  assert not config.teacher.checkpoint
  assert supernet_stage.run(config, epath.Path(tmp_path)).skipped


def test_evaluating_no_batches_is_a_clear_error():
  run = evaluator.Evaluator(lambda inputs, batch, rng: batch['x'])
  with pytest.raises(errors.DataError, match='nothing to evaluate'):
    run.sum([], None)
  total = run.sum([{'x': np.arange(8.0)}, {'x': np.ones(8)}], None)
  np.testing.assert_array_equal(total, np.arange(8.0) + 1)


def test_knn_top1_against_a_hand_checked_example():
  train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
  labels = np.array([0, 0, 1, 1])
  # Query 0 is nearest class 0; query 1 nearest class 1 but labelled 0;
  # query 2 sits among class 1.
  query = np.array([[1.0, 0.05], [0.05, 1.0], [0.2, 0.8]])
  assert rank.knn_top1(train, labels, query, np.array([0, 0, 1]), k=2,
                       num_classes=2) == pytest.approx(2 / 3)
  # With every neighbour voting, weights exp(cos / T) still favour the near.
  assert rank.knn_top1(train, labels, query, np.array([0, 1, 1]), k=4,
                       num_classes=2) == 1.0


@pytest.mark.parametrize('strategy', ['vmap', 'map'])
def test_features_are_the_extracted_subnets_mean_pooled_tokens(workdir,
                                                               strategy):
  config = search_config()
  space = config_lib.space_from_config(config)
  encoder, _ = fitness.load_models(config_lib.scoring(config),
                                   epath.Path(workdir))
  batches = eval_batches(config, 'validation', 20, 16, seed=0)
  rng = np.random.default_rng(2)
  archs = [space.sample(rng) for _ in range(3)]
  extract = rank.FeatureExtractor(encoder, space, capacity=4,
                                  strategy=strategy)
  features, labels = extract(archs, batches)
  assert features.shape == (3, 20, space.max_embed)
  images = data.normalize(np.concatenate([b['image'] for b in batches])[:20])
  np.testing.assert_array_equal(
      labels, np.concatenate([b['label'] for b in batches])[:20])
  for arch, got in zip(archs, features):
    dense = encoder.extract(arch)
    want = np.asarray(dense.encode(images)[:, 1:]).mean(1)
    np.testing.assert_allclose(got[:, :arch.embed_dim], want, rtol=1e-4,
                               atol=1e-5)
    assert not got[:, arch.embed_dim:].any()


def test_linear_probe_agrees_with_scikit_learn_for_a_whole_population():
  from sklearn.linear_model import LogisticRegression
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 12))
  labels = rng.integers(0, 4, 400)
  # Three "subnets": well separated, overlapping, and uninformative features;
  # the second zero-padded past 8 channels like a narrower subnet.
  features = np.stack([centres[labels] * s + rng.normal(size=(400, 12))
                       for s in (3.0, 0.7, 0.0)])
  features[1, :, 8:] = 0
  train, query = features[:, :300], features[:, 300:]
  got = rank.linear_probe_top1(train, labels[:300], query, labels[300:], 4)
  assert got.shape == (3,)
  for i in range(3):
    f = train[i][:, :8] if i == 1 else train[i]
    q = query[i][:, :8] if i == 1 else query[i]
    mean, std = f.mean(0), f.std(0)
    reference = LogisticRegression(C=10.0, max_iter=2000).fit(
        (f - mean) / std, labels[:300]).score((q - mean) / std, labels[300:])
    assert abs(got[i] - reference) <= 0.04, (i, got[i], reference)
  assert got[0] > 0.95 and got[1] < got[0] and got[2] < 0.4


@pytest.mark.parametrize('yardstick', ['knn', 'linear', 'finetune'])
def test_rank_mode_with_each_yardstick(workdir, tmp_path, yardstick):
  num_archs = 3 if yardstick == 'finetune' else 6
  config = search_config(**{'rank.num_archs': num_archs, 'rank.knn_k': 5,
                            'rank.train_images': 64, 'rank.eval_images': 32,
                            'rank.yardstick': yardstick,
                            'rank.finetune_steps': 2,
                            'finetune.batch_size': 16,
                            # What rank's own fine-tuning must override.
                            'finetune.steps': 3, 'finetune.from_scratch': True,
                            'finetune.eval_split': 'test'})
  config.search.supernet = str(
      artifacts.model_dir(epath.Path(workdir), 'supernet'))
  config.teacher.checkpoint = str(epath.Path(workdir) / 'teacher' / 'model')
  result = rank.run(config, epath.Path(tmp_path))
  # NaN-safe (a stratum of one subnet has no Kendall).
  assert json.dumps(result) == json.dumps(json.loads(
      (tmp_path / 'rank/rank.json').read_text()))
  assert (tmp_path / 'rank/scatter.png').read_bytes()[:4] == b'\x89PNG'
  assert result['yardstick'] == yardstick
  archs = result['archs']
  assert len({json.dumps(a['arch']) for a in archs}) == num_archs
  accuracy = [a['yardstick'] for a in archs]
  assert all(0 <= a <= 1 for a in accuracy)
  space = config_lib.space_from_config(config)
  for a in archs:
    arch = Arch.from_dict(a['arch'])
    assert a['params'] == space.count_params(arch)
    assert a['macs'] == space.count_macs(arch)
    assert 0 < a['student_entropy'] < 1
  # Each correlation is the one of its columns; ties (equal accuracies of
  # near-random subnets) are allowed for by tau-b.
  for key, column in (('fitness', 'fitness'),
                      ('params', 'params'), ('macs', 'macs'),
                      ('student_entropy', 'student_entropy')):
    c = result[key] if key == 'fitness' else result['controls'][key]
    want = ranking.correlation([a[column] for a in archs], accuracy,
                               config.seed)
    assert json.dumps(c) == json.dumps(want)  # NaN-safe equality.
  assert 0 < result['teacher_entropy'] < 1
  # Every fitness variant, with its Kendall within parameter strata; the
  # search's own is the one reported as 'fitness'.
  assert set(result['variants']) == set(signals.FITNESSES)
  assert result['fitness_variant'] == config.search.fitness
  for name, c in result['variants'].items():
    column = [a['variants'][name] for a in archs]
    want = ranking.correlation(column, accuracy, config.seed)
    assert json.dumps({k: c[k] for k in want}) == json.dumps(want), name
    assert json.dumps(c['within_params']) == json.dumps(
        ranking.kendall_within_strata(column, accuracy,
                                      [a['params'] for a in archs],
                                      seed=config.seed))
  assert [a['fitness'] for a in archs] == [
      a['variants'][config.search.fitness] for a in archs]
  # A fusion: the mean of its parts' z-scores among these subnets (float64
  # NumPy of the columns written; parameter counts those checked above).
  for name, parts in signals.FUSIONS.items():
    cols = [np.array([a['params'] if p == 'params' else a['variants'][p]
                      for a in archs], np.float64) for p in parts]
    want = np.mean([(c - c.mean()) / c.std() for c in cols], 0)
    np.testing.assert_allclose([a['variants'][name] for a in archs], want,
                               rtol=1e-6, err_msg=name)
  if yardstick == 'finetune':
    # Each subnet fine-tuned as rank says, whatever config.finetune holds:
    # rank's steps, the evaluation split, inherited weights.
    for a in archs:
      run = rank.finetune_dir(config, tmp_path, Arch.from_dict(a['arch']))
      done = json.loads(artifacts.finetune_metrics(run).read_text())
      assert (done['steps'], done['split'], done['inherited']) == (
          2, config.data.eval_split, True)
      assert done['top1'] == a['yardstick']
  assert all(a['variants']['pixel'] < 0 for a in archs)
  if yardstick == 'finetune':
    # Each subnet was fine-tuned (and is read back on a rerun).
    runs = list((tmp_path / 'rank/finetune/2steps').iterdir())
    assert len(runs) == num_archs
    for run in runs:
      metrics = json.loads((run / 'finetune/metrics.json').read_text())
      assert metrics['steps'] == 2 and metrics['inherited']
      assert metrics['top1'] in accuracy
