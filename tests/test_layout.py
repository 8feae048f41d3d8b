"""The package's shape: one error base class, no import cycles."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

from masktas_jax import errors

PACKAGE = pathlib.Path(__file__).parent.parent / 'masktas_jax'
MODULES = sorted('masktas_jax.' + '.'.join(p.relative_to(PACKAGE).with_suffix(
    '').parts) for p in PACKAGE.rglob('*.py') if p.name != '__init__.py')


def _imports(module: str) -> set[str]:
  """The package modules `module` imports, at any depth of its code."""
  path = PACKAGE.joinpath(*module.split('.')[1:]).with_suffix('.py')
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith('masktas_jax')):
      for alias in node.names:
        name = f'{node.module}.{alias.name}'
        found.add(name if name in MODULES else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in MODULES)
  return found & set(MODULES)


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
  assert 'masktas_jax.losses' in graph['masktas_jax.search']


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


# Modules whose `run` is a stage of registry.STAGES; the libraries may be
# imported by any of them.
STAGE_MODULES = ('teacher', 'supernet_train', 'search', 'rank', 'finetune')
# Modes of registry.STAGES that are tools over the stages, not stages: aot
# (mode=compile) builds the stages' own Tasks to compile them.
TOOL_MODULES = ('report', 'aot')


def test_stages_stand_on_libraries_not_on_each_other():
  from masktas_jax import registry  # pylint: disable=g-import-not-at-top
  assert {s.run.__module__.split('.')[-1]
          for s in registry.STAGES.values()} == (
              set(STAGE_MODULES) | set(TOOL_MODULES))
  # No stage stands on a tool that imports stages.
  assert not {(a, 'aot') for a in STAGE_MODULES
              if 'masktas_jax.aot' in _imports(f'masktas_jax.{a}')}
  found = {(a, b.split('.')[-1]) for a in STAGE_MODULES
           for b in _imports(f'masktas_jax.{a}')
           if b.split('.')[-1] in STAGE_MODULES}
  assert not found, found
  # The walk must see real edges: a stage's libraries.
  assert 'masktas_jax.finetuning' in _imports('masktas_jax.rank')


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
    if m.split('.')[-1] == 'registry':
      continue
    path = PACKAGE.joinpath(*m.split('.')[1:]).with_suffix('.py')
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Tuple) and len(node.elts) >= 3:
        names = {e.value for e in node.elts
                 if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        assert not names >= {'teacher', 'supernet', 'search'} or (
            not names <= pipeline | {'rank', 'compile'}), (m, names)


# The command line over the modes: they alone may import a mode's module.
ENTRY_MODULES = ('main', 'cli', 'preflight', 'registry')


def test_libraries_import_no_mode():
  """A library (the trainer, the plots, the data...) stands below every
  mode: importing one would tie it to a stage's command-line behaviour."""
  modes = set(STAGE_MODULES) | set(TOOL_MODULES)
  found = {(m.split('.')[-1], b.split('.')[-1]) for m in MODULES
           if m.split('.')[-1] not in modes | set(ENTRY_MODULES)
           for b in _imports(m) if b.split('.')[-1] in modes}
  assert not found, found
  # The walk must see real edges: the trainer's plots.
  assert 'masktas_jax.plots' in _imports('masktas_jax.trainer')
