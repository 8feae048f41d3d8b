"""Official MAE PyTorch checkpoints -> teacher directories.

  python -m masktas_jax.convert_mae --checkpoint mae_pretrain_vit_base.pth \
      --output /tmp/teacher_vit_b

Reads `{'model': state_dict}`, a bare state dict or MAE's training
checkpoints (`{'model', 'optimizer', 'epoch', 'scaler', 'args'}`), in the
zip or the legacy format, encoder-only (`mae_pretrain_vit_*.pth`) or with
the decoder (`*_full.pth`, visualize checkpoints); infers the shapes (width,
depth, heads, patch and image size) from the tensors, checks every key and
shape, writes a teacher directory (`model_dirs.save_teacher`) usable as
`--config.teacher.checkpoint=DIR`, and prints one line saying what it read,
wrote and assumed.
Reading `.pth` files needs PyTorch (CPU build is enough):
`pip install -e '.[torch]'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import nnx

from masktas_jax import cli
from masktas_jax.errors import MaskTASError
from masktas_jax.models import vit
from masktas_jax.models.mae import MAE, MAEConfig
from masktas_jax.storage import model_dirs

# Widths whose heads are not width / 64 (ViT-H/14: 16 heads of 80).
_HEADS_BY_WIDTH = {1280: 16}
# All released MAE decoders use 16 heads; the tensors cannot tell.
DEFAULT_DECODER_HEADS = 16


class CheckpointError(MaskTASError, ValueError):
  """A file that is not a usable MAE checkpoint."""


@dataclasses.dataclass(frozen=True)
class Read:
  """What a `.pth` file held: its float32 tensors by name, and a phrase
  saying what the file was (for the conversion's one line)."""
  state_dict: dict[str, np.ndarray]
  what: str


# The one non-tensor object MAE's training checkpoints hold: `main_pretrain`'s
# argparse arguments, under 'args'. Nothing else is unpickled.
_SAFE_GLOBALS = (argparse.Namespace,)


def _load_error(path: epath.Path, e: Exception) -> CheckpointError:
  """The one-line CheckpointError for what torch.load raised on `path`."""
  text = ' '.join(str(e).split())
  refused = re.search(r'Unsupported global: GLOBAL (\S+)', text)
  if refused:
    return CheckpointError(
        f'{path}: holds a pickled {refused.group(1)}, which is not read '
        '(weights-only loading: tensors, containers, numbers, strings and '
        "MAE's argparse.Namespace); save the state dict alone with "
        "torch.save(model.state_dict(), ...)")
  if (isinstance(e, EOFError) or 'central directory' in text or
      'unexpected eof' in text.lower()):
    return CheckpointError(f'{path}: truncated or corrupt checkpoint (torch: '
                           f'{_first_sentence(text) or type(e).__name__})')
  return CheckpointError(f'{path}: not a PyTorch checkpoint (torch: '
                         f'{_first_sentence(text) or type(e).__name__})')


def _first_sentence(text: str) -> str:
  """`text` up to its first full stop, so no message ends mid-sentence."""
  head, dot, _ = text.partition('. ')
  return head + ('.' if dot else '')


def read_checkpoint(path: epath.PathLike) -> Read:
  """The tensors of a `.pth` file: a bare state dict, `{'model': state_dict}`
  (released checkpoints) or MAE's training checkpoints (`{'model',
  'optimizer', 'epoch', 'scaler', 'args'}`), in the zip or the legacy
  format."""
  path = epath.Path(path)
  if not path.exists():
    raise CheckpointError(f'{path}: no such file')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        f'{path}: reading PyTorch checkpoints needs torch; install it with '
        "pip install -e '.[torch]' (the CPU build is enough)") from e
  if not hasattr(torch.serialization, 'safe_globals'):
    raise CheckpointError(
        f'{path}: reading needs torch >= 2.5 (found {torch.__version__}); '
        "pip install -U 'torch>=2.5'")
  try:
    with path.open('rb') as f:
      zipped = f.read(2) == b'PK'
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read it ({e.strerror})') from e
  try:
    with torch.serialization.safe_globals(list(_SAFE_GLOBALS)):
      # mmap (zip format only): tensors stay on disk until converted,
      # halving peak memory. The legacy format is read whole.
      obj = torch.load(str(path), map_location='cpu', weights_only=True,
                       mmap=zipped)
  except Exception as e:  # pylint: disable=broad-except
    raise _load_error(path, e) from e
  notes = [] if zipped else ['legacy format']
  kind = 'a state dict'
  if isinstance(obj, dict) and isinstance(obj.get('model'), dict):
    kind = "a {'model': state dict}"
    if 'epoch' in obj or 'optimizer' in obj:
      kind = 'an MAE training checkpoint'
      notes.insert(0, f'epoch {obj.get("epoch", "?")}')
    obj = obj['model']
  what = kind + (f' ({", ".join(notes)})' if notes else '')
  if not isinstance(obj, dict) or not obj or not all(
      isinstance(v, torch.Tensor) for v in obj.values()):
    raise CheckpointError(
        f'{path}: expected a state dict of tensors or {{"model": state_dict}}'
        f', got {type(obj).__name__}')
  return Read({k: v.detach().float().numpy() for k, v in obj.items()}, what)


def read_state_dict(path: epath.PathLike) -> dict[str, np.ndarray]:
  """Tensors of a `.pth` file as float32 NumPy arrays, keyed by name."""
  return read_checkpoint(path).state_dict


def _block_count(sd: dict[str, Any], prefix: str) -> int:
  ids = {int(m.group(1)) for k in sd
         for m in [re.match(rf'{prefix}\.(\d+)\.', k)] if m}
  return max(ids) + 1 if ids else 0


def _shape(sd, key, path):
  if key not in sd:
    raise CheckpointError(f'{path}: missing key {key!r}; not an MAE ViT '
                          'checkpoint')
  return sd[key].shape


def infer_config(sd: dict[str, np.ndarray], path: str = 'checkpoint',
                 num_heads: int = 0,
                 decoder_num_heads: int = DEFAULT_DECODER_HEADS) -> MAEConfig:
  """The MAEConfig whose tensors `sd` holds (heads: given, or width / 64)."""
  d = _shape(sd, 'cls_token', path)[-1]
  w = _shape(sd, 'patch_embed.proj.weight', path)
  if len(w) != 4 or w[0] != d or w[2] != w[3]:
    raise CheckpointError(
        f'{path}: patch_embed.proj.weight has shape {tuple(w)}, expected '
        f'({d}, C, p, p) for width {d}')
  patch, chans = w[2], w[1]
  n = _shape(sd, 'pos_embed', path)[-2] - 1
  grid = int(round(n**0.5))
  if grid * grid != n:
    raise CheckpointError(f'{path}: pos_embed has {n} patch rows, not a '
                          'square grid')
  depth = _block_count(sd, 'blocks')
  if not depth:
    raise CheckpointError(f'{path}: no blocks.N.* keys; not a ViT')
  mlp = _shape(sd, 'blocks.0.mlp.fc1.weight', path)[0]
  heads = num_heads or _HEADS_BY_WIDTH.get(d, d // 64)
  if d % heads:
    raise CheckpointError(f'{path}: width {d} is not divisible into {heads} '
                          'heads; pass --num_heads')
  has_decoder = any(k.startswith(('decoder_', 'mask_token')) for k in sd)
  dec_d = _shape(sd, 'decoder_embed.weight', path)[0] if has_decoder else 512
  dec_depth = _block_count(sd, 'decoder_blocks') if has_decoder else 0
  if has_decoder and dec_d % decoder_num_heads:
    raise CheckpointError(f'{path}: decoder width {dec_d} is not divisible '
                          f'into {decoder_num_heads} heads; pass '
                          '--decoder_num_heads')
  return MAEConfig(
      image_size=grid * patch, patch_size=patch, in_chans=chans, embed_dim=d,
      depth=depth, num_heads=heads, decoder_embed_dim=dec_d,
      decoder_depth=dec_depth,
      decoder_num_heads=decoder_num_heads if has_decoder else
      DEFAULT_DECODER_HEADS, mlp_ratio=mlp / d)


def expected_shapes(c: MAEConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor of an MAE checkpoint with config `c`, and its shape."""
  d, p, n = c.embed_dim, c.patch_size, c.num_patches

  def blocks(prefix, width, count):
    m = int(width * c.mlp_ratio)
    out = {}
    for i in range(count):
      b = f'{prefix}.{i}.'
      out.update({
          b + 'norm1.weight': (width,), b + 'norm1.bias': (width,),
          b + 'attn.qkv.weight': (3 * width, width),
          b + 'attn.qkv.bias': (3 * width,),
          b + 'attn.proj.weight': (width, width),
          b + 'attn.proj.bias': (width,),
          b + 'norm2.weight': (width,), b + 'norm2.bias': (width,),
          b + 'mlp.fc1.weight': (m, width), b + 'mlp.fc1.bias': (m,),
          b + 'mlp.fc2.weight': (width, m), b + 'mlp.fc2.bias': (width,),
      })
    return out

  shapes = {
      'cls_token': (1, 1, d), 'pos_embed': (1, n + 1, d),
      'patch_embed.proj.weight': (d, c.in_chans, p, p),
      'patch_embed.proj.bias': (d,), 'norm.weight': (d,), 'norm.bias': (d,),
      **blocks('blocks', d, c.depth),
  }
  if c.decoder_depth:
    dd = c.decoder_embed_dim
    shapes.update({
        'mask_token': (1, 1, dd), 'decoder_embed.weight': (dd, d),
        'decoder_embed.bias': (dd,), 'decoder_pos_embed': (1, n + 1, dd),
        'decoder_norm.weight': (dd,), 'decoder_norm.bias': (dd,),
        'decoder_pred.weight': (p * p * c.in_chans, dd),
        'decoder_pred.bias': (p * p * c.in_chans,),
        **blocks('decoder_blocks', dd, c.decoder_depth),
    })
  return shapes


def _names(keys, limit=8) -> str:
  keys = sorted(keys)
  more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more


def check_keys(sd: dict[str, np.ndarray], c: MAEConfig, path: str) -> None:
  """Raises CheckpointError listing missing/unexpected keys or bad shapes."""
  want = expected_shapes(c)
  missing, unexpected = set(want) - set(sd), set(sd) - set(want)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'missing keys: {_names(missing)}')
    if unexpected:
      parts.append(f'unexpected keys: {_names(unexpected)}')
    raise CheckpointError(f'{path}: ' + '; '.join(parts))
  bad = [f'{k} {tuple(sd[k].shape)} (expected {want[k]})' for k in sorted(want)
         if tuple(sd[k].shape) != want[k]]
  if bad:
    raise CheckpointError(f'{path}: shapes do not form a ViT: {_names(bad, 4)}')


def _block_state(sd, prefix: str, width: int, heads: int) -> dict[str, Any]:
  hd = width // heads
  qkv_w, qkv_b = sd[prefix + 'attn.qkv.weight'], sd[prefix + 'attn.qkv.bias']
  attn = {}
  # qkv rows are [q | k | v], each head-major (row s*D + h*hd + d); torch
  # Linear weights are (out, in), so transpose to (in, heads, hd).
  for s, name in enumerate(('query', 'key', 'value')):
    rows = slice(s * width, (s + 1) * width)
    attn[name] = {'kernel': qkv_w[rows].T.reshape(width, heads, hd),
                  'bias': qkv_b[rows].reshape(heads, hd)}
  attn['out'] = {'kernel': sd[prefix + 'attn.proj.weight'].T.reshape(
      heads, hd, width), 'bias': sd[prefix + 'attn.proj.bias']}

  def ln(name):
    return {'scale': sd[prefix + name + '.weight'],
            'bias': sd[prefix + name + '.bias']}

  def linear(name):
    return {'kernel': sd[prefix + name + '.weight'].T,
            'bias': sd[prefix + name + '.bias']}

  return {'norm1': ln('norm1'), 'attn': attn, 'norm2': ln('norm2'),
          'mlp': {'fc1': linear('mlp.fc1'), 'fc2': linear('mlp.fc2')}}


def to_pure_state(sd: dict[str, np.ndarray], c: MAEConfig) -> dict[str, Any]:
  """The MAE's state as a nested dict (`nnx.to_pure_dict` layout)."""
  d = c.embed_dim
  # Conv kernel OIHW -> HWIO, flattened in patchify's (row, col, channel).
  patch = sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0).reshape(-1, d)
  encoder = {
      'cls_token': sd['cls_token'].reshape(d),
      'pos_embed': sd['pos_embed'][0],
      'patch_embed': {'proj': {'kernel': patch,
                               'bias': sd['patch_embed.proj.bias']}},
      'blocks': {i: _block_state(sd, f'blocks.{i}.', d, c.num_heads)
                 for i in range(c.depth)},
      'norm': {'scale': sd['norm.weight'], 'bias': sd['norm.bias']},
  }
  state = {'encoder': encoder}
  if c.decoder_depth:
    dd = c.decoder_embed_dim
    state['decoder'] = {
        'mask_token': sd['mask_token'].reshape(dd),
        'decoder_embed': {'kernel': sd['decoder_embed.weight'].T,
                          'bias': sd['decoder_embed.bias']},
        'decoder_pos_embed': sd['decoder_pos_embed'][0],
        'decoder_blocks': {
            i: _block_state(sd, f'decoder_blocks.{i}.', dd,
                            c.decoder_num_heads)
            for i in range(c.decoder_depth)
        },
        'decoder_norm': {'scale': sd['decoder_norm.weight'],
                         'bias': sd['decoder_norm.bias']},
        'decoder_pred': {'kernel': sd['decoder_pred.weight'].T,
                         'bias': sd['decoder_pred.bias']},
    }
  return state


def to_model(sd: dict[str, np.ndarray], path: str = 'checkpoint',
             num_heads: int = 0,
             decoder_num_heads: int = DEFAULT_DECODER_HEADS) -> MAE:
  """The MAE whose tensors `sd` holds, after checking every key and shape."""
  config = infer_config(sd, path, num_heads, decoder_num_heads)
  check_keys(sd, config, path)
  pure = to_pure_state(sd, config)
  model = nnx.eval_shape(lambda: MAE(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(
      state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pure))
  return nnx.merge(graphdef, state)


def load_pytorch_checkpoint(path: epath.PathLike, num_heads: int = 0,
                            decoder_num_heads: int = DEFAULT_DECODER_HEADS
                            ) -> MAE:
  """An official MAE `.pth` checkpoint as an `MAE` NNX module.

  `model.encode(images)` maps (B, H, W, C) normalised images to the final-
  normed tokens (B, 1 + N, D), CLS first, patches in raster order.
  """
  return to_model(read_state_dict(path), str(path), num_heads,
                  decoder_num_heads)


def describe(model: MAE, heads_given: bool, decoder_heads_given: bool
             ) -> str:
  """The conversion's one line: the inferred shape, and what the tensors
  cannot tell (head counts, LayerNorm eps) and was assumed."""
  c = model.config
  heads = 'given' if heads_given else (
      'width / 64' if c.num_heads * 64 == c.embed_dim else 'ViT-H')
  line = (f'ViT width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads '
          f'({heads}), patch {c.patch_size}, image {c.image_size}')
  if c.decoder_depth:
    assumed = ('given' if decoder_heads_given else
               "MAE's; the tensors cannot tell: --decoder_num_heads if not")
    line += (f'; decoder width {c.decoder_embed_dim}, depth '
             f'{c.decoder_depth}, {c.decoder_num_heads} heads ({assumed})')
  else:
    line += '; no decoder'
  return f'{line}; LayerNorm eps {vit.LN_EPS:g} (MAE\'s)'


_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'MAE .pth file.')
_OUTPUT = flags.DEFINE_string('output', None, 'Teacher directory to write.')
_NUM_HEADS = flags.DEFINE_integer(
    'num_heads', 0, 'Encoder heads; 0 = infer (width / 64, ViT-H: 16).')
_DECODER_HEADS = flags.DEFINE_integer(
    'decoder_num_heads', DEFAULT_DECODER_HEADS, 'Decoder heads (MAE: 16).')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace an existing --output (only once the new one '
    'is complete).')

_PROG = 'convert_mae'


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}', _PROG)
  missing = [f'--{name}' for name in ('checkpoint', 'output')
             if not flags.FLAGS[name].value]
  if missing:
    cli.fail(f'{" and ".join(missing)} required: python -m '
             'masktas_jax.convert_mae --checkpoint=FILE.pth --output=DIR',
             _PROG)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    read = read_checkpoint(_CHECKPOINT.value)
    what = read.what
    model = to_model(read.state_dict, _CHECKPOINT.value, _NUM_HEADS.value,
                     _DECODER_HEADS.value)
    del read  # The model holds its own copies of the tensors.
    out = model_dirs.save_teacher(model, _OUTPUT.value, _OVERWRITE.value)
  except (CheckpointError, FileExistsError, ValueError) as e:
    cli.fail(str(e), _PROG)
  print(f'convert_mae: read {_CHECKPOINT.value}, {what}; wrote {out}: ' +
        describe(model, flags.FLAGS['num_heads'].present,
                 flags.FLAGS['decoder_num_heads'].present))


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags, prog=_PROG))
