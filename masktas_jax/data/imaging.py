"""Decoding and cropping one image on the host.

Folder and tfds sources hand out `Encoded` images: the file's bytes or path,
decoded only by the crop that uses it. The crops then decode straight to
the pixels they need: a JPEG whose crop spans at least twice the output
size is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's
"draft" mode), and the crop is resized from PIL's image without a detour
through numpy. In-memory (H, W, 3) uint8 arrays crop alike.
"""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image

from masktas_jax.errors import DataError


class Encoded:
  """An image file not yet decoded: a path, or bytes with a name for errors.

  `shape` is (H, W, 3) from the header alone; `np.asarray(encoded)` decodes
  the whole image to (H, W, 3) uint8 RGB (grey, palette, CMYK converted,
  alpha dropped). Any read error is a `DataError` naming the file.
  """

  def __init__(self, data: bytes | str, name: str | None = None):
    self.data = data
    self.name = name or str(data)

  def open(self) -> Image.Image:
    source = io.BytesIO(self.data) if isinstance(self.data, bytes) else (
        self.data)
    try:
      image = Image.open(source)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise self.error(e) from e
    return image

  def error(self, e: BaseException) -> DataError:
    # A file can be fixed; a training stage keeps its last checkpoint.
    advice = ('' if isinstance(self.data, bytes) else '; remove or replace '
              'it and run the same command: a training stage resumes from '
              'its last checkpoint')
    return DataError(f'{self.name}: unreadable image ({e}){advice}')

  @property
  def shape(self) -> tuple[int, int, int]:
    with self.open() as image:
      w, h = image.size
    return h, w, 3

  def __array__(self, dtype=None, copy=None):
    del copy  # A fresh array every time.
    with self.open() as image:
      rgb = _rgb(image, self)
    return np.asarray(rgb, dtype=dtype)


def _rgb(image: Image.Image, encoded: Encoded) -> Image.Image:
  try:
    image.load()  # A truncated or corrupt file fails here.
    return image if image.mode == 'RGB' else image.convert('RGB')
  except (OSError, ValueError, SyntaxError) as e:
    raise encoded.error(e) from e


Box = tuple[float, float, float, float]  # left, top, right, bottom


def crop_resize(image: np.ndarray | Encoded, size: int,
                box: Box | Callable[[int, int], Box] | None = None
                ) -> np.ndarray:
  """The region `box` (source pixels; a function of the image's (H, W);
  None: all of it) resized to (size, size, 3) uint8 with a bicubic filter.
  A file is opened once: its header gives (H, W) before any decoding."""
  if isinstance(image, np.ndarray):
    h, w = image.shape[:2]
    box = box(h, w) if callable(box) else box
    return np.asarray(Image.fromarray(image).resize(
        (size, size), Image.BICUBIC, box=box))
  with image.open() as pil:
    w, h = pil.size
    box = box(h, w) if callable(box) else box
    left, top, right, bottom = box or (0, 0, w, h)
    # The largest power-of-2 reduction that keeps the crop >= size pixels.
    scale = 1 << max(0, min(3, int(math.log2(
        max(min(right - left, bottom - top) / size, 1)))))
    if scale > 1 and pil.format == 'JPEG':
      drafted = pil.draft('RGB', (w // scale, h // scale))
      if drafted:  # PIL reports the original extent in decoded pixels.
        f = drafted[1][2] / w
        left, top, right, bottom = left * f, top * f, right * f, bottom * f
    rgb = _rgb(pil, image)
    return np.asarray(rgb.resize((size, size), Image.BICUBIC,
                                 box=(left, top, right, bottom)))


def random_resized_crop(image: np.ndarray | Encoded, size: int,
                        rng: np.random.Generator, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Crop of random area fraction and aspect ratio, resized to (size, size,
  3) uint8."""
  def box(h: int, w: int) -> Box | None:
    for _ in range(10):
      area = h * w * rng.uniform(*scale)
      aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
      cw, ch = np.sqrt(area * aspect), np.sqrt(area / aspect)
      if cw <= w and ch <= h:
        x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        return x, y, x + cw, y + ch
    return None  # The whole image.

  return crop_resize(image, size, box)


def center_crop(image: np.ndarray | Encoded, size: int,
                crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation view: shorter side to size / crop_fraction, then the central
  (size, size, 3) uint8 crop."""
  def box(h: int, w: int) -> Box:
    side = min(h, w) * crop_fraction  # The crop's side in source pixels.
    top, left = (h - side) / 2, (w - side) / 2
    return left, top, left + side, top + side

  return crop_resize(image, size, box)
