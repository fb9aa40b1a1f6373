"""MediaPipe's image-to-tensor step (``ImageToTensorCalculator``, CPU path) for batches: rotated rectangles of
an image sampled into square network inputs.

A rectangle is (cx, cy, w, h, rotation) in the image's pixels, rotation in radians (clockwise on screen, y down).
MediaPipe maps the rectangle's corners onto the tensor's corners (0, 0) .. (S, S) and samples output pixel
(u, v), at integer coordinates, from image point

    centre + R(rotation) · ((u / S − 0.5)·w, (v / S − 0.5)·h)

with bilinear interpolation between the four pixels around it (pixel centres at integer coordinates: OpenCV's
``warpPerspective``), into a uint8 image; then scales values to the model's range. Outside the image it reads
zero (BORDER_ZERO) or the nearest edge pixel (BORDER_REPLICATE). There is no antialiasing: a large photo
shrunk to 192 pixels is point-sampled, as in MediaPipe.

The samples are gathered straight from the uint8 image (four per output pixel), so a 48-megapixel photo is
never converted to float: the memory used is that of the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from curate.detect.images import Image, image_hw, to_chw


def letterbox_rect(height: int, width: int) -> tuple[float, float, float, float, float]:
    """The rectangle that ``keep_aspect_ratio`` makes of a whole image for a square tensor: the image's centre,
    the long side both ways (``PadRoi``: equal padding on both short sides), no rotation."""
    side = float(max(height, width))
    return width / 2.0, height / 2.0, side, side, 0.0


def sample_points(rects: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image coordinates (x, y), each (K, size, size), that output pixel (v, u) of each of the K rectangles
    (K, 5) samples."""
    steps = torch.arange(size, device=rects.device, dtype=torch.float32) / size - 0.5
    cx, cy, w, h, angle = (rects[:, k, None, None] for k in range(5))
    a = steps[None, None, :] * w  # along the rectangle's width, per column u
    b = steps[None, :, None] * h  # along its height, per row v
    cos, sin = torch.cos(angle), torch.sin(angle)
    return cx + cos * a - sin * b, cy + sin * a + cos * b


def bilinear(image: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, replicate: bool) -> torch.Tensor:
    """Bilinear samples (C, *xs.shape) as float of the (C, H, W) ``image`` (any dtype) at pixel coordinates
    ``xs``, ``ys``; outside pixels read 0, or with ``replicate`` the nearest edge pixel."""
    channels, height, width = image.shape
    x0f, y0f = torch.floor(xs), torch.floor(ys)
    fx, fy = xs - x0f, ys - y0f
    x0, y0 = x0f.long(), y0f.long()
    flat = image.reshape(channels, -1)
    total = torch.zeros((channels, *xs.shape), device=image.device, dtype=torch.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            x, y = x0 + dx, y0 + dy
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            x, y = x.clamp(0, width - 1), y.clamp(0, height - 1)
            values = flat[:, (y * width + x).reshape(-1)].reshape(channels, *xs.shape).float()
            weight = wx * wy if replicate else torch.where(inside, wx * wy, 0.0)
            total += values * weight
    return total


def crops(image: torch.Tensor, rects: torch.Tensor, size: int, replicate: bool) -> torch.Tensor:
    """The K rectangles (K, 5) of the (3, H, W) uint8 image as (K, 3, size, size) float 0..255, rounded to
    whole values as MediaPipe's uint8 warp is."""
    xs, ys = sample_points(rects, size)
    sampled = bilinear(image, xs, ys, replicate).round_()
    return sampled.permute(1, 0, 2, 3)


def letterbox_batch(images: Sequence[Image], size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each whole image letterboxed into a size x size input (``letterbox_rect``, zero border): the inputs
    (N, 3, size, size) float 0..255 and their rectangles (N, 5)."""
    rects = torch.tensor([letterbox_rect(*image_hw(image)) for image in images], device=device).reshape(-1, 5)
    batch = torch.empty((len(images), 3, size, size), device=device)
    for i, image in enumerate(images):
        batch[i] = crops(to_chw(image, device), rects[i : i + 1], size, replicate=False)[0]
    return batch, rects


def to_image(points: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """Points (..., 2) normalised to a crop's tensor, x and y in [0, 1], -> the image's pixels, given the crop's
    rectangles (..., 5) (broadcast against the points' leading dimensions)."""
    cx, cy, w, h, angle = rects.unbind(-1)
    a = (points[..., 0] - 0.5) * w
    b = (points[..., 1] - 0.5) * h
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cx + cos * a - sin * b, cy + sin * a + cos * b], dim=-1)


def normalize_radians(angle: torch.Tensor) -> torch.Tensor:
    """The angle in [−π, π), as MediaPipe's ``NormalizeRadians``."""
    return angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))
