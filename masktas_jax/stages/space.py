"""mode=space: the search space described, `space.json` and `space.png`
(parameters against MACs of sampled Archs)."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
from etils import epath

from masktas_jax import config_lib
from masktas_jax.stage import Stage
from masktas_jax.storage import artifacts
from masktas_jax.training.plots import save_figure

# After `plots`, which chose the headless backend.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order


def describe_space(config: ml_collections.ConfigDict,
                   workdir: epath.Path) -> dict:
  """Writes `space.json` and `space.png` (params vs MACs of sampled Archs).

  Returns the description written to `space.json`.
  """
  space = config_lib.space_from_config(config)
  info = space.describe()
  rng = np.random.default_rng(config.seed)
  archs = [space.sample(rng) for _ in range(500)]
  params = np.array([space.count_params(a) for a in archs]) / 1e6
  gmacs = np.array([space.count_macs(a) for a in archs]) / 1e9
  info['sampled'] = {
      'count': len(archs),
      'params_m': [round(float(params.min()), 3), round(float(params.max()), 3)],
      'gmacs': [round(float(gmacs.min()), 4), round(float(gmacs.max()), 4)],
  }
  (workdir / artifacts.SPACE).write_text(json.dumps(info, indent=2))

  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(params, gmacs, s=6, alpha=0.5, label='500 random Archs')
  for key, marker in (('min_arch', 'v'), ('max_arch', '^')):
    ax.scatter(info[key]['params'] / 1e6, info[key]['macs'] / 1e9, s=60,
               marker=marker, color='k', label=key.replace('_', ' '))
  ax.set_xlabel('parameters (M)')
  ax.set_ylabel('GMACs per image')
  ax.set_title(f'search space: {info["num_archs"]:.3g} Archs')
  ax.legend()
  save_figure(fig, workdir / artifacts.SPACE_PLOT)

  lo, hi = info['min_arch'], info['max_arch']
  print(f'search space: {info["num_archs"]:.3g} Archs, '
        f'{space.num_patches} patches of {space.patch_size} px')
  for name, a in (('min', lo), ('max', hi)):
    print(f'  {name} Arch: embed {a["embed_dim"]}, depth {a["depth"]}, '
          f'{a["params"] / 1e6:.2f} M params, {a["macs"] / 1e9:.3f} GMACs')
  print(f'  wrote {workdir / artifacts.SPACE} and '
        f'{workdir / artifacts.SPACE_PLOT}')
  return info


STAGE = Stage('space', describe_space, pipeline=True)
