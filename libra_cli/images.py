"""Image loading and preprocessing (docs/reference-format.md#images), numerically identical to the original PIL path.

The original code ran transformers' PIL-based ("slow") image processors. transformers 5 prefers
torchvision-based processors that resize differently (pixel values move by up to 1.4 on a
non-square image), so the PIL path is re-implemented here with PIL + numpy: it is exact against
the fixtures, needs no torchvision, and is what training, inference and serving all call.

Speed (issue 15; ``benchmarks/bench_images.py``): X-rays are grayscale, and the original turned
them into RGB right after decoding, so padding and the (dominant) antialiased resize ran on four
bytes per pixel. Here a grayscale image stays one channel ("L") through decode, pad, resize and
crop; the three channels appear only in the final float array. That is pixel-identical because
Pillow resamples each 8-bit channel with the same fixed-point code, and an RGB image made from
"L" has three equal channels. Rescale + normalise is a 256-entry lookup table built with the very
same float operations, so it is exact too. JPEGs are decoded by Pillow's libjpeg-turbo (exact
integer IDCT); ``jpeg_draft`` (off by default) lets libjpeg scale by 1/2..1/8 while decoding,
which is faster but NOT exact (see docs/performance.md for the measured difference).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from libra_cli.errors import InputError
from libra_cli.urls import fetch

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
    # runtime option, not read from the config file: reduced-size JPEG decoding (inexact, opt-in)
    jpeg_draft: bool = False

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

    @property
    def draft_size(self) -> int | None:
        """Smallest side the JPEG decoder may scale down to when ``jpeg_draft`` is on (2x the resize target)."""
        if not self.jpeg_draft or not self.do_resize:
            return None
        target = self.size.get("shortest_edge") or max(self.size.get("height", 0), self.size.get("width", 0))
        return 2 * int(target) if target else None


# ----------------------------------------------------------------------------- loading


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def load_image(source: Any, draft_size: int | None = None) -> Image.Image:
    """Load a file path, URL, DICOM (file or pydicom Dataset), raw bytes or PIL image as a PIL image ("L" or "RGB").

    Grayscale stays single-channel ("L"; 16-bit and DICOM are min-max scaled to 8 bits); every
    other mode becomes RGB. :func:`preprocess` expands "L" to three channels at the very end.
    ``draft_size``: let the JPEG decoder scale down by 1/2..1/8 while the longer side stays at least
    this many pixels (inexact; ``None`` = full decode). Raises :class:`InputError` with a one-line
    reason for missing, unreadable or non-image files.
    """
    if isinstance(source, Image.Image):
        return _normalise_mode(source)
    if isinstance(source, (bytes, bytearray)):
        return _open_bytes(bytes(source), "<bytes>", draft_size)
    if isinstance(source, (str, Path)):
        s = str(source)
        if _is_url(s):
            return _open_bytes(fetch(s), s, draft_size)
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
            return _dicom_image(data, s)
        return _open_bytes(data, s, draft_size)
    if _is_dataset(source):  # a pydicom Dataset (e.g. fetched over DICOMweb): the same decoding as a DICOM file
        return dataset_image(source, f"DICOM instance {getattr(source, 'SOPInstanceUID', '?')} of series "
                                     f"{getattr(source, 'SeriesInstanceUID', '?')}")
    raise InputError(f"unsupported image input of type {type(source).__name__}; give a path, URL, bytes or PIL image")


def _is_dataset(source: Any) -> bool:
    if not type(source).__module__.startswith("pydicom."):
        return False
    from pydicom.dataset import Dataset

    return isinstance(source, Dataset)


def _looks_like_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _open_bytes(data: bytes, name: str, draft_size: int | None = None) -> Image.Image:
    if _looks_like_dicom(data):
        return _dicom_image(data, name)
    try:
        img = Image.open(io.BytesIO(data))
        _check_pixels(img.size, name)
        if draft_size and img.format == "JPEG":
            _draft(img, draft_size)
        img.load()
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {name} is too large to decode safely ({exc}); check the file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a readable image: {name} ({exc.__class__.__name__}); give a JPEG, PNG or DICOM file") from exc
    return _normalise_mode(img)


def max_pixels() -> int:
    """Largest image libra decodes (``LIBRA_MAX_IMAGE_PIXELS``, default 100 million): a guard against files
    whose header promises gigapixels. Pillow's own global limit is left as the user set it."""
    try:
        return int(float(os.environ.get("LIBRA_MAX_IMAGE_PIXELS", "1e8")))
    except ValueError as exc:
        raise InputError("LIBRA_MAX_IMAGE_PIXELS must be a number of pixels") from exc


def _check_pixels(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w * h > max_pixels():
        raise InputError(f"image {name} is {w} x {h} pixels, over the {max_pixels():,} limit "
                         "(LIBRA_MAX_IMAGE_PIXELS); a chest X-ray is far smaller: check the file")


def _draft(img: Image.Image, min_side: int) -> None:
    """Ask libjpeg for the largest 1/2, 1/4 or 1/8 reduction that keeps the longer side >= ``min_side``."""
    w, h = img.size
    scale = next((s for s in (8, 4, 2) if max(w, h) // s >= min_side), 1)
    if scale > 1:
        img.draft(img.mode, (w // scale, h // scale))  # Pillow picks the scale from floor division


def _normalise_mode(img: Image.Image) -> Image.Image:
    """"L" for grayscale (16-bit / float min-max scaled: PIL's convert would clip at 255), else "RGB"."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_minmax_uint8(np.asarray(img, dtype=np.float64)))
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("LA", "1"):  # what convert("RGB") would repeat in all three channels
        return img.convert("L")
    return img.convert("RGB")


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _dicom_image(data: bytes, name: str) -> Image.Image:
    """DICOM file bytes -> :func:`dataset_image`."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise InputError(f"not a readable DICOM image: {name} ({exc}); check the file or convert it to PNG") from exc
    return dataset_image(ds, name)


def dataset_image(ds: Any, name: str) -> Image.Image:
    """DICOM -> "L" (or RGB): VOI LUT (or windowing), MONOCHROME1 inverted, min-max to 0..255 (docs/reference-format.md#images)."""
    from pydicom.pixels import apply_voi_lut

    try:
        _check_pixels((int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0)), name)
        arr = ds.pixel_array
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise InputError(f"not a readable DICOM image: {name} ({exc}); check the file or convert it to PNG") from exc
    arr = apply_voi_lut(arr, ds).astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # multi-frame: take the first frame
        arr = arr[0]
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    return _normalise_mode(Image.fromarray(_minmax_uint8(arr)))


# ----------------------------------------------------------------------------- preprocessing


def expand_to_square(img: Image.Image, color: tuple[int, ...] | int) -> Image.Image:
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
    """Centre crop of an ``[H, W]`` or ``[H, W, C]`` array; too-small images are zero-padded first (as transformers)."""
    h, w = arr.shape[:2]
    if h < height or w < width:
        ph, pw = max(height, h), max(width, w)
        padded = np.zeros((ph, pw, *arr.shape[2:]), dtype=arr.dtype)
        top, left = (ph - h) // 2, (pw - w) // 2
        padded[top : top + h, left : left + w] = arr
        arr, h, w = padded, ph, pw
    top = (h - height) // 2
    left = (w - width) // 2
    return arr[top : top + height, left : left + width]


def _pad_rows_and_resize(img: Image.Image, fill: Any, size: dict[str, int], resample: Image.Resampling) -> Image.Image:
    """``expand_to_square`` + ``resize`` of a wide image without resampling the pad rows one by one.

    Pillow resizes in two passes, horizontal into an 8-bit intermediate image, then vertical; the
    passes can be run as two calls with identical results. Every pad row of the square has the
    same horizontal result, so the image rows are resampled once, one pad row once, and the
    intermediate is assembled from them (exact; saves the pad rows' share of the costly pass).
    """
    w, h = img.size
    ow, oh = _resize_size(w, w, size)
    top = (w - h) // 2
    inter = np.empty((w, ow, 3) if img.mode == "RGB" else (w, ow), dtype=np.uint8)
    inter[top : top + h] = np.asarray(img.resize((ow, h), resample=resample, reducing_gap=None))
    pad_row = np.asarray(Image.new(img.mode, (w, 1), fill).resize((ow, 1), resample=resample, reducing_gap=None))
    inter[:top] = pad_row
    inter[top + h :] = pad_row
    return Image.fromarray(inter).resize((ow, oh), resample=resample, reducing_gap=None)


def _luts(cfg: ImageProcessorConfig) -> list[np.ndarray]:
    """Per channel, uint8 value -> float32 output, by the same float ops the original applied per pixel.

    float64 rescale, cast to float32, then float32 ``(x - mean) / std``: elementwise IEEE
    operations, so a 256-entry table of their results is exactly the per-pixel result.
    """
    v = np.arange(256, dtype=np.uint8)
    x = (v.astype(np.float64) * cfg.rescale_factor).astype(np.float32) if cfg.do_rescale else v.astype(np.float32)
    if not cfg.do_normalize:
        return [x, x, x]
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    return [(x - mean[c]) / std[c] for c in range(3)]


def preprocess(img: Image.Image, cfg: ImageProcessorConfig, pad: bool = True) -> np.ndarray:
    """PIL image -> float32 ``[3, H, W]``, exactly as the original pipeline (pad, resize, crop, scale, norm).

    A grayscale ("L") image is processed as one channel and expanded to three at the end, unless
    the pad colour differs between channels (then the channels really differ: RGB path).
    """
    img = _normalise_mode(img)
    color = cfg.pad_color
    if img.mode == "L" and pad and img.width != img.height and len(set(color)) > 1:
        img = img.convert("RGB")
    fill = color[0] if img.mode == "L" else color
    resample = _RESAMPLE.get(cfg.resample, Image.Resampling.BICUBIC)
    if pad and cfg.do_resize and img.width > img.height:
        img = _pad_rows_and_resize(img, fill, cfg.size, resample)
    else:
        if pad:
            img = expand_to_square(img, fill)
        if cfg.do_resize:
            img = img.resize(_resize_size(*img.size, cfg.size), resample=resample, reducing_gap=None)
    arr = np.asarray(img)
    if cfg.do_center_crop and cfg.crop_size:
        arr = _center_crop(arr, cfg.crop_size["height"], cfg.crop_size["width"])
    luts = _luts(cfg)
    out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
    for c in range(3):
        if arr.ndim == 3:
            np.take(luts[c], arr[..., c], out=out[c])
        elif c and np.array_equal(luts[c], luts[c - 1]):
            out[c] = out[c - 1]
        else:
            np.take(luts[c], arr, out=out[c])
    return out


# ----------------------------------------------------------------------------- per-run cache


class PreprocessCache:
    """Preprocessed arrays per (file, mtime, size, processor, pad), least recently used dropped past ``max_bytes``.

    One process often preprocesses the same file more than once (a prior that is another study's
    current, the web app's example pair, ``--interactive`` questions); a RAD-DINO input is 3.2 MB,
    a full-size JPEG takes ~0.1 s to decode and resize. Callers get copies, so the cache can't be
    changed through them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(source: Any, cfg: ImageProcessorConfig, pad: bool) -> tuple | None:
        """A key for local files (None for URLs, bytes, PIL images: those are not cached)."""
        if not isinstance(source, (str, Path)) or _is_url(str(source)):
            return None
        try:
            path = Path(source).expanduser().resolve()
            st = path.stat()
        except OSError:
            return None
        return (str(path), st.st_mtime_ns, st.st_size, repr(cfg), pad)

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return arr.copy()

    def put(self, key: tuple, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = arr.copy()
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


CACHE = PreprocessCache(int(os.environ.get("LIBRA_IMAGE_CACHE_MB", "256")) << 20)


def load_and_preprocess(source: Any, cfg: ImageProcessorConfig, pad: bool = True, cache: bool = True) -> np.ndarray:
    """:func:`load_image` then :func:`preprocess`; local files are cached per run (``cache=False`` skips it)."""
    key = PreprocessCache.key(source, cfg, pad) if cache and CACHE.max_bytes > 0 else None
    if key is not None and (hit := CACHE.get(key)) is not None:
        return hit
    arr = preprocess(load_image(source, cfg.draft_size), cfg, pad=pad)
    if key is not None:
        CACHE.put(key, arr)
    return arr


def load_and_preprocess_many(sources: Sequence[Any], cfg: ImageProcessorConfig, pad: bool = True,
                             workers: int | None = None) -> list[np.ndarray]:
    """Several images at once (current + prior): Pillow releases the GIL while it decodes and resizes,
    so threads use the cores. Equal sources are processed once (and share one array in the result)."""

    def ident(s: Any) -> Any:
        return s if isinstance(s, (str, Path, bytes)) else id(s)

    slot: dict[Any, int] = {}
    todo: list[Any] = []
    for s in sources:
        if ident(s) not in slot:
            slot[ident(s)] = len(todo)
            todo.append(s)
    n = min(len(todo), workers if workers is not None else (os.cpu_count() or 1))
    if n <= 1:
        done = [load_and_preprocess(s, cfg, pad) for s in todo]
    else:
        with ThreadPoolExecutor(n, thread_name_prefix="libra-img") as pool:
            done = list(pool.map(lambda s: load_and_preprocess(s, cfg, pad), todo))
    return [done[slot[ident(s)]] for s in sources]


def to_pixels(source: Any, cfg: ImageProcessorConfig, pad: bool = True) -> np.ndarray:
    """Any image a study may hold -> float32 ``[3, H, W]`` exactly as libra preprocesses it (every engine).

    A zero-argument callable (a lazy dataset cell) is called first; arrays that are preprocessed
    already (numpy float32 or a torch tensor, ``[3, H, W]``) pass through.
    """
    if callable(source) and not isinstance(source, (str, bytes, bytearray, Path)):
        source = source()
    if isinstance(source, np.ndarray) and source.ndim == 3 and source.dtype == np.float32:
        return source
    if type(source).__module__.startswith("torch") and getattr(source, "ndim", 0) == 3:  # torch is not imported here
        return source.float().cpu().numpy()
    return load_and_preprocess(source, cfg, pad=pad)
