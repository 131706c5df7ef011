"""uint8 scalar quantisation of unit vectors, in luxical's convention.

Values are clipped to [-limit, limit] and mapped onto 256 evenly spaced levels, so any value
inside the limit comes back within limit / 255 of where it was.
"""

from __future__ import annotations

import numpy as np


def quantize_uint8(x: np.ndarray, limit: float) -> np.ndarray:
    if not limit > 0:
        raise ValueError(f"quantisation limit must be > 0, got {limit}")
    bin_width = 2.0 * limit / 255.0
    scaled = (np.clip(x, -limit, limit) + limit) / bin_width
    return np.rint(scaled).astype(np.uint8)


def dequantize_uint8(q: np.ndarray, limit: float) -> np.ndarray:
    if not limit > 0:
        raise ValueError(f"quantisation limit must be > 0, got {limit}")
    bin_width = np.float32(2.0 * limit / 255.0)
    return q.astype(np.float32) * bin_width - np.float32(limit)


def calibrate_limit(x: np.ndarray, quantile: float = 0.9999) -> float:
    """A limit that clips only the most extreme (1 - quantile) share of values."""
    return float(np.quantile(np.abs(x), quantile))
