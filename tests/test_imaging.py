"""Decoding at reduced size where the crop allows, against full decodes."""

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from masktas_jax.data import imaging
from masktas_jax.errors import DataError
from helpers import photo


@pytest.fixture
def drafts(monkeypatch):
  """The reduction factor of each JPEG draft decode made."""
  made = []
  original = JpegImagePlugin.JpegImageFile.draft

  def spy(self, mode, size):
    w = self.size[0]
    out = original(self, mode, size)
    made.append(round(w / out[1][2]) if out else 1)
    return out

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, 'draft', spy)
  return made


@pytest.mark.parametrize('box, size, factor', [
    ((100, 80, 740, 720), 64, 8),   # A 640 px crop to 64 px: 1/8 decode.
    ((50, 40, 350, 340), 64, 4),    # 300 px to 64: 1/4 (1/8 is < 64 px).
    ((10, 20, 230.5, 220.5), 96, 2),  # 200 px to 96: 1/2.
    ((0, 0, 200, 150), 96, 1),      # 150 px to 96: full size.
])
def test_draft_decode_matches_the_full_decode(tmp_path, drafts, box, size,
                                              factor):
  path = tmp_path / 'photo.jpg'
  Image.fromarray(photo(960, 720)).save(path, quality=95)
  full = np.asarray(Image.open(path).convert('RGB'))
  want = imaging.crop_resize(full, size, box)
  got = imaging.crop_resize(imaging.Encoded(str(path)), size, box)
  assert drafts == ([factor] if factor > 1 else [])
  if factor == 1:
    np.testing.assert_array_equal(got, want)
  diff = np.abs(got.astype(int) - want.astype(int))
  # The same view: DCT scaling smooths a little, no shift (a one-pixel
  # shift of the white square's edges would leave errors near 100).
  assert got.shape == want.shape == (size, size, 3)
  assert diff.mean() < 2.0 and np.percentile(diff, 99) < 25, (
      diff.mean(), np.percentile(diff, 99))


def test_encoded_reads_its_shape_from_the_header_and_decodes_on_demand(
    tmp_path):
  pixels = photo(37, 23)
  Image.fromarray(pixels).save(tmp_path / 'a.png')
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert('P').save(buffer, 'PNG')
  for encoded, want in ((imaging.Encoded(str(tmp_path / 'a.png')), pixels),
                        (imaging.Encoded(buffer.getvalue(), 'example 3'),
                         np.asarray(Image.fromarray(pixels).convert('P')
                                    .convert('RGB')))):
    assert encoded.shape == (23, 37, 3)
    decoded = np.asarray(encoded)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, want)
    # PNGs are never drafted: crops equal the array path's exactly.
    np.testing.assert_array_equal(
        imaging.center_crop(encoded, 16), imaging.center_crop(want, 16))
  # Stored bytes are named as given; a file also says how to go on.
  with pytest.raises(DataError, match=r'^example 7: unreadable image \(.*\)$'):
    imaging.Encoded(b'\x89PNG\r\n\x1a\n broken', 'example 7').shape
  (tmp_path / 'b.jpg').write_bytes(b'\xff\xd8 broken')
  with pytest.raises(DataError, match=(
      rf'^{tmp_path}/b.jpg: unreadable image \(.*\); remove or replace it and '
      'run the same command: a training stage resumes from its last '
      'checkpoint$')):
    imaging.center_crop(imaging.Encoded(str(tmp_path / 'b.jpg')), 8)


def test_random_resized_crop_is_the_same_view_for_files_and_arrays(tmp_path):
  """The crop's random draw depends on the image's shape alone, so a file
  and its decoded array give the same view."""
  path = tmp_path / 'p.png'
  pixels = photo(120, 90, seed=1)
  Image.fromarray(pixels).save(path)
  for seed in range(5):
    got = imaging.random_resized_crop(imaging.Encoded(str(path)), 24,
                                      np.random.default_rng(seed))
    want = imaging.random_resized_crop(pixels, 24,
                                       np.random.default_rng(seed))
    np.testing.assert_array_equal(got, want)
