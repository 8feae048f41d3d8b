"""Every mode of `python -m masktas_jax.main`, from the stage modules' own
declarations (`stage.Stage`).

`main` runs them, the pre-flight checks read what they declare, and the
config's `mode` is checked against `MODES`. To add a stage: a module that
ends with `STAGE = stage.Stage(...)` and one line in `STAGES` below.
"""

from __future__ import annotations

from masktas_jax import config_lib
from masktas_jax.errors import ConfigError
from masktas_jax.stage import Stage
from masktas_jax.stages import cache, compile as compile_stage, finetune, rank
from masktas_jax.stages import search, space as space_stage, summary
from masktas_jax.stages import supernet as supernet_stage, teacher

# In the pipeline's order (each stage returns at once when its output
# exists, so a rerun of an interrupted pipeline resumes where it stopped).
STAGES: dict[str, Stage] = {s.mode: s for s in (
    space_stage.STAGE,
    teacher.STAGE,
    supernet_stage.STAGE,
    search.STAGE,
    rank.STAGE,
    finetune.STAGE,
    summary.STAGE,
    cache.STAGE,
    # Not a stage: compiles the others' steps for another accelerator.
    compile_stage.STAGE,
)}
PIPELINE = tuple(mode for mode, s in STAGES.items() if s.pipeline)
MODES = ('pipeline',) + tuple(STAGES)


def validate(config):
  """`config_lib.validate`, and `config.mode` one of MODES (ConfigError
  naming the field otherwise)."""
  if config.mode not in MODES:
    raise ConfigError(f'config.mode: expected one of {MODES}, got '
                      f'{config.mode!r}')
  return config_lib.validate(config)


def stages(config) -> tuple[Stage, ...]:
  """The stages `config.mode` runs, in order."""
  modes = PIPELINE if config.mode == 'pipeline' else (config.mode,)
  return tuple(STAGES[m] for m in modes)
