"""Command-line plumbing: flag parsing whose errors end in one line."""

from __future__ import annotations

import sys

from absl import flags


def fail(message: str, prog: str = 'masktas_jax') -> None:
  """Prints `message` as one line, '<prog>: error: ...', and exits 2."""
  print(f'{prog}: error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str], prog: str = 'masktas_jax') -> list[str]:
  """absl flag parsing whose config errors end in one line, exit code 2."""

  def die(message: str) -> None:
    fail(message, prog)

  try:
    return flags.FLAGS(argv)
  except AttributeError as e:
    # ml_collections reports an override of a field the locked config lacks
    # with the key and a suggestion in a quoted repr.
    parts = str(e).replace('\\n', '\n').strip('\'"').split('\n')
    key = parts[0].strip('\'"\\')
    overridden = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    if any(path.split('.')[-1] == key or f'.{key}.' in path + '.'
           for path in overridden):
      hint = f' ({parts[1].strip()})' if len(parts) > 1 else ''
      die(f'--config: no field {key!r} in the config{hint}')
    die(f'--config: the config file raised AttributeError: {e}')
  except (flags.Error, KeyError, TypeError, ValueError) as e:
    message = str(e)
    if 'Error whilst parsing config file' in message:
      # get_config raised (e.g. a bad `:ARG`): its traceback ends with the
      # exception, the one line worth showing.
      last = message.strip().splitlines()[-1].strip()
      die(f'--config: the config file raised {last}')
    die(message)
  except Exception as e:  # pylint: disable=broad-except
    # Anything else comes from executing the user's config file.
    die(f'--config: the config file raised {type(e).__name__}: {e}')
