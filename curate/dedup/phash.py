"""64-bit DCT perceptual hash (pHash): grey, 32 x 32, 2-D DCT-II, the 8 x 8 lowest frequencies against their
median. Re-encoding and resizing leave it nearly unchanged; a mirror image has a hash of its own, computed from
the same coefficients (horizontal frequencies of odd order change sign)."""

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


def thumbnail(data: bytes) -> np.ndarray:
    """The image as a (32, 32) float grey array, upright. JPEGs decode at a reduced scale first (draft), which
    is what makes hashing cheap; the hash is of the 8 x 8 lowest frequencies, which that does not disturb."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (SIDE * 4, SIDE * 4))
        grey = ImageOps.exif_transpose(image).convert("L")
        return np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float64)


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
