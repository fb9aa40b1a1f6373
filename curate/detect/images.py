"""The two forms an image may take on its way into a detector, and conversions between them.

* a NumPy array (H, W, 3) RGB uint8 (also (H, W) grey, (H, W, 1) or (H, W, 4) RGBA): what PIL decodes on the CPU;
* a torch tensor (3, H, W) RGB uint8 (or (1, H, W) grey), usually already on the GPU: what nvJPEG decodes there
  (`curate.detect.gpu_decode`). Detectors take it as it is, so the pixels never travel back to the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import torch

Image: TypeAlias = Any  # np.ndarray (H, W, C) or torch.Tensor (C, H, W), uint8, RGB


def is_tensor(image: Image) -> bool:
    return not isinstance(image, np.ndarray) and hasattr(image, "permute")


def image_hw(image: Image) -> tuple[int, int]:
    """(height, width) of either form."""
    if is_tensor(image):
        return int(image.shape[-2]), int(image.shape[-1])
    return int(image.shape[0]), int(image.shape[1])


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8; also takes grey (H, W) / (H, W, 1) and RGBA (alpha dropped)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def to_chw(image: Image, device: torch.device | str) -> torch.Tensor:
    """(3, H, W) RGB uint8 on `device`, from either form."""
    import torch

    if is_tensor(image):
        tensor: torch.Tensor = image
        if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(f"expected a (3, H, W) uint8 tensor, got {tuple(tensor.shape)} {tensor.dtype}")
        tensor = tensor[:3] if tensor.shape[0] != 1 else tensor.expand(3, -1, -1)
        return tensor.to(device, non_blocking=True)
    array = np.ascontiguousarray(as_rgb_uint8(image))
    hwc = torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)
    return hwc.permute(2, 0, 1)


def to_hwc_numpy(image: Image) -> np.ndarray:
    """(H, W, 3) RGB uint8 on the host, from either form (for the CPU-only code paths)."""
    if is_tensor(image):
        tensor = image if image.shape[0] != 1 else image.expand(3, -1, -1)
        return np.ascontiguousarray(tensor[:3].permute(1, 2, 0).cpu().numpy())
    return as_rgb_uint8(image)
