"""Image loading and preprocessing (docs/reference-format.md#images), numerically identical to the original PIL path.

The original code ran transformers' PIL-based ("slow") image processors. transformers 5 prefers
torchvision-based processors that resize differently (pixel values move by up to 1.4 on a
non-square image), so the PIL path is re-implemented here in ~40 lines of PIL + numpy: it is
exact against the fixtures, needs no torchvision, and is what training, inference and serving
all call.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from libra_cli.errors import InputError

ImageInput = "str | Path | Image.Image | bytes"

# Pillow resampling codes as stored in preprocessor_config.json (`resample`)
_RESAMPLE = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
}

DICOM_SUFFIXES = {".dcm", ".dicom"}


@dataclass
class ImageProcessorConfig:
    """The subset of a HF image-processor config that CLIP/BiT/SigLIP/DINOv2 processors use."""

    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 518})
    crop_size: dict[str, int] | None = field(default_factory=lambda: {"height": 518, "width": 518})
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5307, 0.5307, 0.5307)
    image_std: tuple[float, ...] = (0.2583, 0.2583, 0.2583)
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageProcessorConfig:
        size = d.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = d.get("crop_size")
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(
            size=dict(size),
            crop_size=dict(crop) if crop else None,
            resample=int(d.get("resample", 3)),
            do_resize=bool(d.get("do_resize", True)),
            do_center_crop=bool(d.get("do_center_crop", crop is not None)),
            do_rescale=bool(d.get("do_rescale", True)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_normalize=bool(d.get("do_normalize", True)),
            image_mean=tuple(d.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(d.get("image_std", (0.5, 0.5, 0.5))),
            do_convert_rgb=bool(d.get("do_convert_rgb", True)),
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImageProcessorConfig:
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise InputError(f"no preprocessor_config.json in {folder}; point --vision-tower at a complete encoder folder")
        return cls.from_dict(json.loads(path.read_text()))

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the processed image."""
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        e = self.size["shortest_edge"]
        return e, e

    @property
    def pad_color(self) -> tuple[int, ...]:
        """Pad-to-square fill: the original uses ``int(m * 255)`` of the processor mean."""
        return tuple(int(m * 255) for m in self.image_mean)


# ----------------------------------------------------------------------------- loading


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def load_image(source: Any) -> Image.Image:
    """Load a file path, URL, DICOM, raw bytes or PIL image as an RGB PIL image.

    Raises :class:`InputError` with a one-line reason for missing, unreadable or non-image files.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        return _open_bytes(bytes(source), "<bytes>")
    if isinstance(source, (str, Path)):
        s = str(source)
        if _is_url(s):
            return _open_bytes(_fetch_url(s), s)
        path = Path(s).expanduser()
        if not path.exists():
            raise InputError(f"image not found: {s}; check the path")
        if path.is_dir():
            raise InputError(f"image path is a folder: {s}; give an image file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {s}: {exc.strerror or exc}") from exc
        if path.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(data):
            return _dicom_to_rgb(data, s)
        return _open_bytes(data, s)
    raise InputError(f"unsupported image input of type {type(source).__name__}; give a path, URL, bytes or PIL image")


def _fetch_url(url: str) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - user-given image URL
            return resp.read()
    except Exception as exc:  # noqa: BLE001 - any network failure is a user-facing input problem
        raise InputError(f"cannot download image {url}: {exc}") from exc


def _looks_like_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if _looks_like_dicom(data):
        return _dicom_to_rgb(data, name)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a readable image: {name} ({exc.__class__.__name__}); give a JPEG, PNG or DICOM file") from exc
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB conversion; 16-bit / float grayscale is min-max scaled (PIL's convert would clip it at 255)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(_minmax_uint8(arr)).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _dicom_to_rgb(data: bytes, name: str) -> Image.Image:
    """DICOM -> RGB: VOI LUT (or windowing), MONOCHROME1 inverted, min-max to 0..255 (docs/reference-format.md#images)."""
    try:
        import pydicom
        from pydicom.pixels import apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise InputError("DICOM support needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise InputError(f"not a readable DICOM image: {name} ({exc}); check the file or convert it to PNG") from exc
    arr = apply_voi_lut(arr, ds).astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # multi-frame: take the first frame
        arr = arr[0]
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    img = Image.fromarray(_minmax_uint8(arr))
    return img.convert("RGB")


# ----------------------------------------------------------------------------- preprocessing


def expand_to_square(img: Image.Image, color: tuple[int, ...]) -> Image.Image:
    """Centre the image on a square canvas of its longer side (the original ``expand2square``)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), color)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _resize_size(w: int, h: int, size: dict[str, int]) -> tuple[int, int]:
    """(width, height) as transformers' ``get_resize_output_image_size`` computes it."""
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
    if h < height or w < width:  # pad like transformers does, then crop
        ph, pw = max(height, h), max(width, w)
        padded = np.zeros((ph, pw, arr.shape[2]), dtype=arr.dtype)
        top, left = (ph - h) // 2, (pw - w) // 2
        padded[top : top + h, left : left + w] = arr
        arr, h, w = padded, ph, pw
    top = (h - height) // 2
    left = (w - width) // 2
    return arr[top : top + height, left : left + width]


def preprocess(img: Image.Image, cfg: ImageProcessorConfig, pad: bool = True) -> np.ndarray:
    """PIL image -> float32 CHW array, exactly as the original pipeline (pad, resize, crop, scale, norm)."""
    if cfg.do_convert_rgb and img.mode != "RGB":
        img = img.convert("RGB")
    if pad:
        img = expand_to_square(img, cfg.pad_color)
    if cfg.do_resize:
        w, h = _resize_size(*img.size, cfg.size)
        img = img.resize((w, h), resample=_RESAMPLE.get(cfg.resample, Image.Resampling.BICUBIC), reducing_gap=None)
    arr = np.asarray(img)
    if cfg.do_center_crop and cfg.crop_size:
        arr = _center_crop(arr, cfg.crop_size["height"], cfg.crop_size["width"])
    if cfg.do_rescale:
        arr = (arr.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        arr = arr.astype(np.float32)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, dtype=arr.dtype)
        std = np.asarray(cfg.image_std, dtype=arr.dtype)
        arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_and_preprocess(source: Any, cfg: ImageProcessorConfig, pad: bool = True) -> np.ndarray:
    """Convenience: :func:`load_image` then :func:`preprocess`."""
    return preprocess(load_image(source), cfg, pad=pad)


# Pillow must not refuse the large, sometimes truncated JPEGs of clinical exports.
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = 400_000_000
