"""The package's shape: one error base class, no import cycles, and the
rules of its folders (stages, libraries, models, data)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

from masktas_jax import errors

PACKAGE = pathlib.Path(__file__).parent.parent / 'masktas_jax'


def _name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(('masktas_jax',) + parts)


def _path(module: str) -> pathlib.Path:
  path = PACKAGE.joinpath(*module.split('.')[1:])
  return path / '__init__.py' if path.is_dir() else path.with_suffix('.py')


# Every module, packages with code in their __init__ (data) among them.
MODULES = sorted(_name(p) for p in PACKAGE.rglob('*.py')
                 if p.name != '__init__.py' or len(ast.parse(
                     p.read_text()).body) > 1)


def _imports(module: str) -> set[str]:
  """The package modules `module` imports, at any depth of its code."""
  path = _path(module)
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith('masktas_jax')):
      for alias in node.names:
        name = f'{node.module}.{alias.name}'
        found.add(name if name in MODULES else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in MODULES)
  return (found & set(MODULES)) - {module}  # A package reading its own parts.


def test_no_import_cycles():
  graph = {m: _imports(m) for m in MODULES}
  # A module that imports one of its importers is a cycle; search depth-first.
  state = {}

  def visit(m, path):
    state[m] = 'open'
    for n in graph[m]:
      if state.get(n) == 'open':
        pytest.fail('import cycle: ' + ' -> '.join(path[path.index(n):] + [n]))
      if n not in state:
        visit(n, path + [n])
    state[m] = 'done'

  for m in MODULES:
    if m not in state:
      visit(m, [m])
  # The walk must see real edges, or it would pass on anything.
  assert 'masktas_jax.losses' in graph['masktas_jax.stages.search']


@pytest.mark.parametrize('module', MODULES)
def test_every_error_is_a_masktas_error(module):
  """main catches MaskTASError alone: an error class outside it would end a
  run with a traceback instead of one line."""
  mod = importlib.import_module(module)
  for name, obj in vars(mod).items():
    # Preempted is no error: main ends the run with exit 0 on it.
    if (inspect.isclass(obj) and issubclass(obj, Exception)
        and obj.__module__ == module and obj is not errors.Preempted):
      assert issubclass(obj, errors.MaskTASError), f'{module}.{name}'


def _folder(module: str) -> str:
  """'stages', 'training', ... for a module in a folder; '' at the top."""
  parts = module.split('.')
  return parts[1] if len(parts) > 2 or _path(module).name == '__init__.py' \
      else ''


# The command line over the modes: they alone may import a stage.
ENTRY_MODULES = ('masktas_jax.main', 'masktas_jax.cli',
                 'masktas_jax.preflight', 'masktas_jax.registry')
# Foundations at the top that models and data may stand on.
FOUNDATIONS = ('masktas_jax.errors', 'masktas_jax.space',
               'masktas_jax.masking', 'masktas_jax.losses',
               'masktas_jax.parallel', 'masktas_jax.settings')
# The config's reader (loading, validation, typed settings from a config):
# above the libraries whose choices it validates, below the stages.
CONFIG = 'masktas_jax.config_lib'
# Its fields and their defaults, read through it alone.
DEFAULTS = 'masktas_jax.defaults'
STAGES = [m for m in MODULES if _folder(m) == 'stages']


def test_every_stage_module_is_named_after_its_mode():
  from masktas_jax import registry  # pylint: disable=g-import-not-at-top
  assert {s.run.__module__ for s in registry.STAGES.values()} == set(STAGES)
  for mode, s in registry.STAGES.items():
    assert s.run.__module__ == f'masktas_jax.stages.{mode}', mode


def test_stages_stand_on_libraries_not_on_each_other():
  """No stage imports another; compile, a tool over the stages, builds
  their own Tasks to compile them, and no stage imports it."""
  found = {(a, b) for a in STAGES if a != 'masktas_jax.stages.compile'
           for b in _imports(a) if b in STAGES}
  assert not found, found
  # The walk must see real edges: a stage's libraries, compile's stages.
  assert 'masktas_jax.training.finetuning' in _imports(
      'masktas_jax.stages.rank')
  assert 'masktas_jax.stages.supernet' in _imports(
      'masktas_jax.stages.compile')


def test_every_mode_is_declared_once_by_its_module():
  """The registry holds each stage module's own declaration, and no module
  outside the registry keeps a list of the modes."""
  from masktas_jax import registry  # pylint: disable=g-import-not-at-top
  for mode, s in registry.STAGES.items():
    module = importlib.import_module(s.run.__module__)
    assert s in vars(module).values(), mode
    assert s.mode == mode
  assert registry.PIPELINE == ('space', 'teacher', 'supernet', 'search',
                               'finetune', 'summary')
  # A hand-kept tuple of mode names elsewhere would drift from the registry.
  pipeline = set(registry.PIPELINE)
  for m in MODULES:
    if m == 'masktas_jax.registry':
      continue
    for node in ast.walk(ast.parse(_path(m).read_text())):
      if isinstance(node, ast.Tuple) and len(node.elts) >= 3:
        names = {e.value for e in node.elts
                 if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        assert not names >= {'teacher', 'supernet', 'search'} or (
            not names <= pipeline | {'rank', 'compile'}), (m, names)


def test_libraries_import_no_stage():
  """A library (the trainer, the plots, the data...) stands below every
  mode: importing one would tie it to a stage's command-line behaviour."""
  found = {(m, b) for m in MODULES
           if _folder(m) != 'stages' and m not in ENTRY_MODULES
           for b in _imports(m) if _folder(b) == 'stages'}
  assert not found, found
  # The walk must see real edges: the trainer's plots.
  assert 'masktas_jax.training.plots' in _imports(
      'masktas_jax.training.trainer')


@pytest.mark.parametrize('folder', ['models', 'data'])
def test_models_and_data_stand_on_foundations_only(folder):
  """The networks and the input pipeline know nothing of training, search,
  storage or compiling: each imports its own folder and the foundations."""
  found = {(m, b) for m in MODULES if _folder(m) == folder
           for b in _imports(m)
           if _folder(b) != folder and b not in FOUNDATIONS}
  assert not found, found
  assert any(_imports(m) for m in MODULES if _folder(m) == folder)


def test_only_stages_and_entry_points_read_the_config():
  """Libraries take typed settings (MAEConfig, StudentConfig, SearchSpace),
  config sections or plain values; the config is read above them."""
  found = {m for m in MODULES if CONFIG in _imports(m)
           and _folder(m) != 'stages' and m not in ENTRY_MODULES}
  assert not found, found
  # The walk must see real edges: the stages read it.
  assert CONFIG in _imports('masktas_jax.stages.supernet')
  assert {m for m in MODULES if DEFAULTS in _imports(m)} == {CONFIG}


def test_every_module_lives_in_its_layer():
  """The top of the package holds the entry points and the foundations;
  everything else lives in a folder (stages, training, evaluation,
  compilation, storage, data, models)."""
  top = {m for m in MODULES if not _folder(m)}
  assert top == set(ENTRY_MODULES) | set(FOUNDATIONS) | {
      CONFIG, DEFAULTS, 'masktas_jax.stage', 'masktas_jax.hostmem',
      'masktas_jax.convert_mae'}
  assert {_folder(m) for m in MODULES} == {
      '', 'stages', 'training', 'evaluation', 'compilation', 'storage',
      'data', 'models'}
