"""mode=search: evolutionary search with the label-free fitness (paper §2.4).

Each candidate subnet of the trained supernet is rated by how consistent its
token relations are with the frozen teacher's on the same visible patches
(eq. 13-16, `losses.relation_consistency`), averaged over a fixed set of
masked evaluation images. The teacher's features of those images are
computed once for the whole search; each generation's population is scored
in one compiled call per evaluation batch over the stacked Arch encodings.

Writes `search/state.json` (the evolution, after every generation: a killed
search resumes there), `search/history.jsonl` (every scored candidate),
`search/best_arch.json`, `search/fitness.png` and `search/pareto.png`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
from etils import epath

from masktas_jax import config_lib, losses, parallel
from masktas_jax.errors import SearchError
from masktas_jax.evaluation import signals
from masktas_jax.evaluation.evolution import Evolution
from masktas_jax.evaluation.fitness import capacity, check_teacher_entropy
from masktas_jax.evaluation.fitness import load_scorer
from masktas_jax.evaluation.window import check_window, sample_archs, Window
from masktas_jax.stage import Stage, SUPERNET, TEACHER_CHECKPOINT
from masktas_jax.storage import artifacts
from masktas_jax.training import plots, tensorboard, trainer


def _record(entry: dict[str, Any]) -> dict[str, Any]:
  return {**entry, 'flops': 2 * entry['macs']}


def write_outputs(out: epath.Path, evolution: Evolution,
                  scoring: dict[str, Any]) -> dict[str, Any]:
  """history.jsonl, best_arch.json and the two plots; returns the best.

  `scoring` ('fitness_variant', 'relation', 'teacher_entropy') goes into
  best_arch.json.
  """
  arch, fitness = evolution.best
  space = evolution.space
  best = {'arch': arch.to_dict(), 'fitness': fitness,
          'params': space.count_params(arch), 'macs': space.count_macs(arch),
          'flops': space.count_flops(arch),
          'generations': evolution.generation,
          'window': evolution.window.describe(), **scoring}
  if jax.process_index() == 0:
    lines = [json.dumps(_record(e)) for e in evolution.history]
    (out / artifacts.SEARCH_HISTORY).write_text('\n'.join(lines) + '\n')
    variant = scoring.get('fitness_variant', 'relation')
    plots.search_plots(evolution.history, out, f'fitness ({variant})')
  artifacts.write_json(out / artifacts.BEST_ARCH, best)
  return best


def progress(history: list[dict[str, Any]]):
  """(generation, scalars) per generation of a search's history: the best
  fitness so far, the generation's mean fitness, and the parameters (M) of
  the best so far; what fitness.png shows, for TensorBoard."""
  best = None
  for g in sorted({e['generation'] for e in history}):
    scored = [e for e in history if e['generation'] == g]
    top = max(scored, key=lambda e: e['fitness'])
    if best is None or top['fitness'] > best['fitness']:
      best = top
    yield g, {'best_fitness': best['fitness'],
              'mean_fitness': sum(e['fitness'] for e in scored) / len(scored),
              'best_params_m': best['params'] / 1e6}


def _relation_dict(relation: losses.Relation) -> dict[str, Any]:
  return dataclasses.asdict(relation)


def check(config, workdir: epath.Path, earlier: frozenset[str]) -> None:
  """SearchError for a window no subnet of the space fits."""
  del workdir, earlier
  check_window(config_lib.space_from_config(config),
               Window.from_config(config.search))


def run(config, workdir: epath.Path) -> dict[str, Any]:
  """Runs (or resumes) the search; returns best_arch.json's content."""
  s = config.search
  space = config_lib.space_from_config(config)
  window = Window.from_config(s)
  check_window(space, window)
  relation = config_lib.relation_from_config(s)
  out = artifacts.stage_dir(workdir, 'search')
  out.mkdir(parents=True, exist_ok=True)

  # --- the evolution, fresh or where a killed search stopped ---------------
  state_path = out / artifacts.SEARCH_STATE
  teacher_entropy = None
  if state_path.exists():
    state = json.loads(state_path.read_text())
    evolution = Evolution.from_state_dict(state, space)
    if evolution.window != window:
      raise SearchError(
          f'config.search: the window ({window.describe()}) differs from the '
          f'one of the search in {out} ({evolution.window.describe()}); use '
          'another workdir for a new window')
    # Searches saved before the choice rated by the relation.
    saved_fitness = state.get('fitness_variant', 'relation')
    if saved_fitness != s.fitness:
      raise SearchError(
          f'config.search.fitness: {s.fitness!r} differs from the fitness '
          f'of the search in {out} ({saved_fitness!r}): values would not '
          'compare; use another workdir')
    saved = state.get('relation')
    if saved is not None and saved != _relation_dict(relation):
      raise SearchError(
          f'config.search: the relation maps ({_relation_dict(relation)}) '
          f'differ from those of the search in {out} ({saved}): fitness '
          'values would not compare; use another workdir')
    teacher_entropy = state.get('teacher_entropy')
    # More generations continue a finished search; the rest stays as saved.
    evolution.config = dataclasses.replace(evolution.config,
                                           generations=s.generations)
    parallel.log(f'search: resumed after generation {evolution.generation}')
  else:
    evolution = Evolution.from_config(space, s, config.seed)
  scoring = {'fitness_variant': s.fitness,
             'relation': _relation_dict(relation),
             'teacher_entropy': teacher_entropy}
  if evolution.done:
    parallel.log(f'search: {out / artifacts.BEST_ARCH} is complete; not '
                 'searching again')
    return write_outputs(out, evolution, scoring)

  # --- scorer: teacher features of the evaluation images, once -------------
  scorer = load_scorer(config_lib.scoring(config), workdir,
                       capacity=capacity(s))
  if s.fitness in signals.FUSIONS:
    # Standardised against a fixed sample of the window (the same on
    # resume).
    scorer.calibrate(sample_archs(space, window, signals.FUSION_REFERENCE,
                                  config.seed + 10))
  scoring['teacher_entropy'] = scorer.teacher_entropy
  split = s.eval_split or config.data.train_split
  parallel.log(f'search: {scorer.num_images} images of {split!r}, '
               f'window {window.describe()}; teacher relation-map entropy '
               f'{scorer.teacher_entropy:.3f} of its maximum ({relation})')
  warning = check_teacher_entropy(scorer.teacher_entropy)
  if warning:
    parallel.log(warning)

  # --- generations ----------------------------------------------------------
  t0, first = time.perf_counter(), evolution.generation
  while not evolution.done:
    candidates = evolution.propose()
    start = time.perf_counter()
    evolution.tell(scorer(candidates))
    took = time.perf_counter() - start
    artifacts.write_json(state_path, {**evolution.state_dict(), **scoring})
    best_arch, best_fitness = evolution.best
    done = evolution.generation - first
    eta = (time.perf_counter() - t0) / done * (
        s.generations - evolution.generation)
    parallel.log(
        f'search generation {evolution.generation}/{s.generations}: '
        f'{len(candidates)} candidates in {took:.1f}s '
        f'({len(candidates) / max(took, 1e-9):.1f}/s), best fitness '
        f'{best_fitness:.4f} ({space.count_params(best_arch) / 1e6:.2f}M '
        f'params), ETA {trainer.format_eta(eta)}')
  best = write_outputs(out, evolution, scoring)
  tensorboard.write_series(out, progress(evolution.history))
  parallel.log(f'search: best Arch {best["arch"]} fitness '
               f'{best["fitness"]:.4f}; wrote {out / artifacts.BEST_ARCH}')
  return best


STAGE = Stage('search', run, check,
                    reads=(TEACHER_CHECKPOINT, SUPERNET),
                    data=True, batch='search', pipeline=True)
