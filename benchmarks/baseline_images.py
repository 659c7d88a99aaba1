"""The image path as it was before issue 15 (RGB from the decoder on), kept as the benchmark baseline.

``bench_images.py`` times it against ``libra_cli.images`` in the same run and checks that both give
identical pixels. Not used by the package.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from libra_cli.images import ImageProcessorConfig

_RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
             3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


def load_image_rgb(path: str | Path) -> Image.Image:
    """Decode, then convert to RGB straight away (16-bit min-max scaled), as the old ``load_image``."""
    img = Image.open(io.BytesIO(Path(path).read_bytes()))
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        u8 = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255.0).astype(np.uint8)
        return Image.fromarray(u8).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _expand_to_square(img: Image.Image, color: tuple[int, ...]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), color)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _resize_size(w: int, h: int, size: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        short, long_ = (w, h) if w <= h else (h, w)
        new_short = size["shortest_edge"]
        new_long = int(new_short * long_ / short)
        if "longest_edge" in size and new_long > size["longest_edge"]:
            new_short = int(size["longest_edge"] * new_short / new_long)
            new_long = size["longest_edge"]
        return (new_short, new_long) if w <= h else (new_long, new_short)
    return size["width"], size["height"]


def _center_crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < height or w < width:
        ph, pw = max(height, h), max(width, w)
        padded = np.zeros((ph, pw, arr.shape[2]), dtype=arr.dtype)
        top, left = (ph - h) // 2, (pw - w) // 2
        padded[top : top + h, left : left + w] = arr
        arr, h, w = padded, ph, pw
    top, left = (h - height) // 2, (w - width) // 2
    return arr[top : top + height, left : left + width]


def preprocess_rgb(img: Image.Image, cfg: ImageProcessorConfig, pad: bool = True) -> np.ndarray:
    """RGB pad, resize, crop, float64 rescale, normalise, HWC -> CHW (the old ``preprocess``)."""
    if cfg.do_convert_rgb and img.mode != "RGB":
        img = img.convert("RGB")
    if pad:
        img = _expand_to_square(img, cfg.pad_color)
    if cfg.do_resize:
        w, h = _resize_size(*img.size, cfg.size)
        img = img.resize((w, h), resample=_RESAMPLE.get(cfg.resample, Image.Resampling.BICUBIC), reducing_gap=None)
    arr = np.asarray(img)
    if cfg.do_center_crop and cfg.crop_size:
        arr = _center_crop(arr, cfg.crop_size["height"], cfg.crop_size["width"])
    arr = (arr.astype(np.float64) * cfg.rescale_factor).astype(np.float32) if cfg.do_rescale else arr.astype(np.float32)
    if cfg.do_normalize:
        arr = (arr - np.asarray(cfg.image_mean, dtype=arr.dtype)) / np.asarray(cfg.image_std, dtype=arr.dtype)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def baseline_load_and_preprocess(path: str | Path, cfg: ImageProcessorConfig, pad: bool = True) -> np.ndarray:
    """The whole old path for one image file."""
    return preprocess_rgb(load_image_rgb(path), cfg, pad)
