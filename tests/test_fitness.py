"""The search signal: the label-free fitness of trained subnets depends on the
teacher (issue: a fitness that ranks subnets by the student alone is no
relation consistency)."""

import pathlib

import numpy as np
import pytest
from etils import epath
from scipy import stats

from masktas_jax import config_lib, losses, main
from masktas_jax.evaluation import fitness
from masktas_jax.evaluation.window import Window
from masktas_jax.stages import rank

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A small wide space on the digits, a teacher and a supernet trained briefly
# (a minute on 2 cores): enough for token relations with structure.
TINY = {
    'space.embed_dims': (32, 48, 64), 'space.depths': (1, 2, 3),
    'space.num_heads': (1, 2), 'space.mlp_ratios': (1.0, 2.0, 4.0),
    'teacher.embed_dim': 64, 'teacher.depth': 2, 'teacher.num_heads': 1,
    'teacher.decoder_embed_dim': 32, 'teacher.decoder_num_heads': 1,
    'teacher.steps': 150, 'teacher.batch_size': 32,
    'supernet.steps': 200, 'supernet.batch_size': 32,
    'supernet.decoder_depth': 1, 'supernet.decoder_embed_dim': 32,
    'supernet.decoder_num_heads': 1,
    'search.min_params_m': 0.03, 'search.max_params_m': 0.12,
    'search.eval_images': 128, 'search.batch_size': 64,
    'checkpoint_every': 1000, 'log_every': 50,
}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, workdir) with a trained teacher and supernet."""
  workdir = tmp_path_factory.mktemp('trained')
  for mode in ('teacher', 'supernet'):
    main.run(config_lib.load_config(str(ROOT / 'configs/demo.py'),
                                    mode=mode, **TINY), str(workdir))
  return config_lib.load_config(str(ROOT / 'configs/demo.py'), **TINY), \
      epath.Path(workdir)


def _kendall(a, b):
  return stats.kendalltau(a, b).statistic


def test_the_fitness_ranking_depends_on_the_teacher(trained):
  """Another image's teacher tokens, or noise of the same per-token norms,
  in place of each image's own must reorder 30 window subnets (Kendall
  <= 0.5 against the real teacher's ranking). The paper's literal relation
  (raw dot products at tau 1, self-relations in) fails this: its maps are
  one-hot and the ranking is the student's own map entropy."""
  config, workdir = trained
  space = config_lib.space_from_config(config)
  archs = rank.sample_archs(space, Window.from_config(config.search), 30,
                            seed=0)
  assert len(archs) == 30
  scorer = fitness.load_scorer(config_lib.scoring(config), workdir,
                               capacity=30)
  z_teacher, z_students = scorer.tokens(archs)
  rng = np.random.default_rng(0)
  noise = rng.normal(size=z_teacher.shape)
  noise *= (np.linalg.norm(z_teacher, axis=-1, keepdims=True) /
            np.linalg.norm(noise, axis=-1, keepdims=True))
  teachers = {'real': z_teacher, 'permuted': np.roll(z_teacher, 1, axis=0),
              'noise': noise.astype(np.float32)}

  def ranking(relation, teacher):
    return [float(relation.fitness(teacher, z).mean()) for z in z_students]

  default = config_lib.relation_from_config(config.search)
  real = ranking(default, teachers['real'])
  # The scorer's own fitness is this one.
  np.testing.assert_allclose(scorer(archs), real, rtol=1e-5, atol=1e-6)
  for name in ('permuted', 'noise'):
    tau = _kendall(real, ranking(default, teachers[name]))
    assert tau <= 0.5, (name, tau)

  literal = losses.Relation('dot', 1.0, 1.0, exclude_self=False)
  literal_real = ranking(literal, teachers['real'])
  assert max(_kendall(literal_real, ranking(literal, teachers[name]))
             for name in ('permuted', 'noise')) > 0.5
