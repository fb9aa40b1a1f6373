"""64-bit DCT perceptual hash (pHash): grey, 32 x 32, 2-D DCT-II, the 8 x 8 lowest frequencies against their
median. Re-encoding and resizing leave it nearly unchanged; a mirror image has a hash of its own, computed from
the same coefficients (horizontal frequencies of odd order change sign).

Crops and borders move a pHash far (bench/neardup.py: a 5-10 % crop per side by 16 bits at the median), so each
image is also hashed on VIEWS, insets of its picture at two depths and five positions, and, where it has uniform
borders (letterbox bars, frames), on the same views of the picture without them (`trim_borders`). A re-upload cropped
by a few percent per side, or given bars, has a full view close to one of its original's views."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image, ImageOps

SIDE = 32
LOW = 8


@cache
def dct_matrix(n: int = SIDE) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n): coefficients = D @ x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


# (inset per side, shift right, shift down) as fractions of the picture; the full view first: insets of 3.5 and 7.5 %,
# each centred and shifted by 2 % each way. Chosen with bench/neardup.py on the dev photos (bench/README.md): at
# dedup.crop_distance=4 these eleven caught crops of 2-5 % per side 1.000, of 5-10 % 0.963 and bordered copies 1.000
# with no distinct photos merged. Five views (three depths) needed distance 6 for as much (0.986 of the 5-10 % crops):
# a radius of 6 has 120 times more random 64-bit neighbours than one of 4, and eleven views took 4.6x as long to
# search at 6 as at 4 (1M rows).
SHIFTS = ((0.0, 0.0), (-0.02, 0.0), (0.02, 0.0), (0.0, -0.02), (0.0, 0.02))
VIEWS = ((0.0, 0.0, 0.0), *((inset, dx, dy) for inset in (0.035, 0.075) for dx, dy in SHIFTS))
BORDER_TOLERANCE = 10  # grey levels: a border line is within this of the edge's colour (JPEG rings by a few)
BORDER_MAX = 0.3  # at most this fraction of a side is taken for border


def grey_picture(data: bytes) -> Image.Image:
    """The image in grey, upright, at least 128 px a side where it has them. JPEGs decode at a reduced scale first
    (draft), which is what makes hashing cheap; the hashes are of the 8 x 8 lowest frequencies of 32 x 32, which that
    does not disturb."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (SIDE * 4, SIDE * 4))
        return ImageOps.exif_transpose(image).convert("L")


def thumbnail(data: bytes) -> np.ndarray:
    """The image as a (32, 32) float grey array, upright: what its pHash is made from."""
    return _small(grey_picture(data))


def _small(grey: Image.Image) -> np.ndarray:
    return np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float64)


def trim_borders(grey: Image.Image) -> Image.Image:
    """The picture without uniform borders: from each side, the lines (rows or columns) whose pixels are, all but a
    tenth, within BORDER_TOLERANCE of the edge line's median, at most BORDER_MAX of the side. A picture that is uniform
    almost from edge to edge (a blank image) is returned whole."""
    pixels = np.asarray(grey, dtype=np.float64)
    height, width = pixels.shape

    def border(lines: np.ndarray) -> int:
        edge = np.median(lines[0])
        uniform = (np.abs(lines - edge) <= BORDER_TOLERANCE).mean(axis=1) >= 0.9  # a percentile without sorting
        return len(lines) if uniform.all() else int(np.argmin(uniform))

    top, bottom, left, right = border(pixels), border(pixels[::-1]), border(pixels.T), border(pixels.T[::-1])
    if top + bottom >= height - 4 or left + right >= width - 4:
        return grey
    top, bottom = min(top, int(BORDER_MAX * height)), min(bottom, int(BORDER_MAX * height))
    left, right = min(left, int(BORDER_MAX * width)), min(right, int(BORDER_MAX * width))
    return grey.crop((left, top, width - right, height - bottom))


def view_thumbnails(grey: Image.Image) -> np.ndarray:
    """(len(VIEWS), 32, 32): each view of the picture, as `thumbnail` makes the full one."""
    width, height = grey.size
    out = []
    for inset, dx, dy in VIEWS:
        box = (
            round(width * (inset + dx)),
            round(height * (inset + dy)),
            width - round(width * (inset - dx)),
            height - round(height * (inset - dy)),
        )
        out.append(_small(grey.crop(box) if inset else grey))
    return np.stack(out)


def low_frequencies(thumbs: np.ndarray) -> np.ndarray:
    """(N, 32, 32) -> (N, 8, 8) lowest 2-D DCT coefficients."""
    d = dct_matrix()[:LOW]
    return np.einsum("ui,nij,vj->nuv", d, thumbs, d)


def bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(N, 64) bools, most significant first -> (N,) uint64."""
    weights = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def hashes(coefficients: np.ndarray) -> np.ndarray:
    """(N, 8, 8) coefficients -> (N,) uint64 hashes: each coefficient above the block's median is a 1 bit."""
    if len(coefficients) == 0:
        return np.zeros(0, dtype=np.uint64)
    flat = coefficients.reshape(len(coefficients), LOW * LOW)
    return bits_to_uint64(flat > np.median(flat, axis=1, keepdims=True))


def mirrored(coefficients: np.ndarray) -> np.ndarray:
    """The coefficients of the left-right mirror image."""
    sign = np.where(np.arange(LOW) % 2 == 1, -1.0, 1.0)
    return coefficients * sign[None, None, :]


def phash(data: bytes) -> int:
    return int(hashes(low_frequencies(thumbnail(data)[None]))[0])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def to_hex(values: np.ndarray) -> list[str]:
    return [f"{int(v):016x}" for v in values]
