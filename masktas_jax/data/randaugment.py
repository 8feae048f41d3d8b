"""RandAugment as DeiT and MAE fine-tune with it: timm's
`rand-m9-mstd0.5-inc1` on PIL images, for the host-side input pipeline.

Per image, `num_layers` operations are drawn uniformly, with replacement,
from the 15 below; each is applied with probability `prob`, at a magnitude
drawn from N(magnitude, magnitude_std) and clipped to [0, 10]. Magnitudes
map to each operation's argument as timm's "increasing" variants do (a
larger magnitude is a stronger change for every operation); rotations,
shears, translations and enhancements take a random sign. Geometric
operations fill with the data's mean colour and resample bicubically (DeiT's
training interpolation). The image operations are PIL's; what is written
here is the policy: which operation, how strong.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0

_AFFINE = Image.Transform.AFFINE
_BICUBIC = Image.Resampling.BICUBIC


def _solarize_add(img: Image.Image, add: int, thresh: int = 128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
  # Pillow >= 10 refuses 0 bits, which timm's magnitude 10 asks for (and
  # older Pillow honoured): no bits kept is a black image.
  if bits == 0:
    return Image.new(img.mode, img.size)
  return ImageOps.posterize(img, bits)


def _enhance(kind):
  return lambda img, factor, _: getattr(ImageEnhance, kind)(img).enhance(
      factor)


def _affine(matrix_of):
  def op(img, arg, fill):
    return img.transform(img.size, _AFFINE, matrix_of(arg, img.size),
                         resample=_BICUBIC, fillcolor=fill)
  return op


# name -> (operation(image, argument, fill), argument of a magnitude m in
# [0, 10] (None: the operation takes none), whether the argument's sign is
# random).
OPS: dict[str, tuple[Callable, Callable[[float], float] | None, bool]] = {
    'AutoContrast': (lambda img, _, __: ImageOps.autocontrast(img), None,
                     False),
    'Equalize': (lambda img, _, __: ImageOps.equalize(img), None, False),
    'Invert': (lambda img, _, __: ImageOps.invert(img), None, False),
    'Rotate': (lambda img, deg, fill: img.rotate(deg, resample=_BICUBIC,
                                                 fillcolor=fill),
               lambda m: m / 10 * 30, True),
    # Keep 4 down to 0 most significant bits.
    'PosterizeIncreasing': (lambda img, bits, _: _posterize(img, bits),
                            lambda m: 4 - int(m / 10 * 4), False),
    # Invert above a threshold falling from 256 to 0.
    'SolarizeIncreasing': (lambda img, t, _: ImageOps.solarize(img, t),
                           lambda m: 256 - min(256, int(m / 10 * 256)),
                           False),
    'SolarizeAdd': (lambda img, add, _: _solarize_add(img, add),
                    lambda m: min(128, int(m / 10 * 110)), False),
    # Enhancement factors 1 +- 0.9 m / 10 (at least 0.1); 1 is the identity.
    'ColorIncreasing': (_enhance('Color'), lambda m: m / 10 * 0.9, True),
    'ContrastIncreasing': (_enhance('Contrast'), lambda m: m / 10 * 0.9,
                           True),
    'BrightnessIncreasing': (_enhance('Brightness'), lambda m: m / 10 * 0.9,
                             True),
    'SharpnessIncreasing': (_enhance('Sharpness'), lambda m: m / 10 * 0.9,
                            True),
    'ShearX': (_affine(lambda f, _: (1, f, 0, 0, 1, 0)),
               lambda m: m / 10 * 0.3, True),
    'ShearY': (_affine(lambda f, _: (1, 0, 0, f, 1, 0)),
               lambda m: m / 10 * 0.3, True),
    # Shifts of up to 45% of the width or height.
    'TranslateXRel': (_affine(lambda p, size: (1, 0, p * size[0], 0, 1, 0)),
                      lambda m: m / 10 * 0.45, True),
    'TranslateYRel': (_affine(lambda p, size: (1, 0, 0, 0, 1, p * size[1])),
                      lambda m: m / 10 * 0.45, True),
}
_ENHANCE = ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
            'SharpnessIncreasing')


def argument(name: str, magnitude: float, negate: bool = False):
  """The argument operation `name` takes at `magnitude` (sign flipped by
  `negate` where the sign is random), or None."""
  _, level, signed = OPS[name]
  if level is None:
    return None
  arg = level(magnitude)
  if signed and negate:
    arg = -arg
  if name in _ENHANCE:
    arg = max(0.1, 1.0 + arg)
  return arg


def apply(image: Image.Image, name: str, magnitude: float,
          negate: bool = False,
          fill: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
  """Operation `name` at `magnitude`, deterministic: the building block."""
  return OPS[name][0](image, argument(name, magnitude, negate), fill)


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """DeiT's RandAugment (timm `rand-m{magnitude}-mstd{magnitude_std}-inc1`,
  `num_layers` 2, `prob` 0.5); `fill` the RGB colour geometric operations
  leave behind (the data's mean)."""
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  num_layers: int = 2
  prob: float = 0.5
  fill: tuple[int, int, int] = (124, 116, 104)

  def __post_init__(self):
    if not 0 <= self.magnitude <= MAX_MAGNITUDE:
      raise ValueError(f'magnitude: expected 0..{MAX_MAGNITUDE:g}, got '
                       f'{self.magnitude}')
    if self.magnitude_std < 0:
      raise ValueError(f'magnitude_std: must be >= 0, got '
                       f'{self.magnitude_std}')

  def sample(self, rng: np.random.Generator
             ) -> list[tuple[str, float, bool] | None]:
    """Per layer: (operation, magnitude, negate), or None where the layer
    is skipped (probability 1 - prob)."""
    names = list(OPS)
    plan = []
    for _ in range(self.num_layers):
      name = names[rng.integers(len(names))]
      if rng.random() >= self.prob:
        plan.append(None)
        continue
      m = rng.normal(self.magnitude, self.magnitude_std) if (
          self.magnitude_std) else self.magnitude
      plan.append((name, float(np.clip(m, 0, MAX_MAGNITUDE)),
                   bool(rng.random() < 0.5)))
    return plan

  def __call__(self, image: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8."""
    plan = [step for step in self.sample(rng) if step is not None]
    if not plan:
      return image
    img = Image.fromarray(image)
    for name, magnitude, negate in plan:
      img = apply(img, name, magnitude, negate, self.fill)
    return np.asarray(img)
