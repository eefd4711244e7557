"""Evaluation metrics exactly as the paper's evaluation code computes them.

- :func:`rgb_to_y`: ITU-R BT.601 luma with the studio range, as ``skimage.color.rgb2ycbcr``:
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in [0, 1], so Y lies in
  [16, 235] / 255 here (this library keeps images in [0, 1]).
"""

from __future__ import annotations

import numpy as np

_BT601_Y = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of an RGB image, float (H, W, 3) in [0, 1] -> float64 (H, W) in [16/255, 235/255]."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    return (16.0 / 255.0) + rgb.astype(np.float64) @ _BT601_Y
