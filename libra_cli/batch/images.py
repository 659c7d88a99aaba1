"""Batch images: decode + preprocess in background threads, and keep encoder outputs until their last use.

An image shared by several samples (a prior that is also a current) is decoded and encoded once per
run; the model never waits for JPEG decoding when the workers keep up. What the cache holds is the
engine's (``encode_images``): encoder outputs (torch tensors), or pixels (numpy arrays) for vLLM.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from libra_cli.batch.inputs import ImageRef
from libra_cli.images import to_pixels
from libra_cli.requests import Model


def decode_image(source: Any, model: Model) -> np.ndarray:
    """Any image source -> float32 ``[3, H, W]`` exactly as ``libra infer`` preprocesses it for ``model``."""
    return to_pixels(source, model.image_processor, pad=model.pad_images)


class ImagePrefetcher:
    """Background decode + preprocess (threads: PIL and numpy release the GIL)."""

    def __init__(self, decode: Callable[[Any], Any], workers: int = 2) -> None:
        self._decode = decode
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="libra-img") if workers > 0 else None
        self._futures: dict[str, Future] = {}
        self.wait_s = 0.0

    def submit(self, ref: ImageRef) -> None:
        if ref.key in self._futures or self._pool is None:  # no workers: decoded in take()
            return
        self._futures[ref.key] = self._pool.submit(self._decode, ref.source)

    def take(self, ref: ImageRef) -> Any:
        """The preprocessed pixels (blocking; time spent waiting is counted); raises the decode error."""
        t = time.perf_counter()
        try:
            f = self._futures.pop(ref.key, None)
            return self._decode(ref.source) if f is None else f.result()
        finally:
            self.wait_s += time.perf_counter() - t

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class EncoderCache:
    """Encoder outputs per image key, dropped after their last planned use (and LRU over ``max_bytes``)."""

    def __init__(self, uses: dict[str, int], max_bytes: int) -> None:
        self._left = dict(uses)
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def put(self, key: str, value: Any) -> None:
        if key in self._data:
            return
        self._data[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._bytes -= old.nbytes

    def used(self, key: str) -> None:
        """One planned use done; free the entry after the last one."""
        self._left[key] = self._left.get(key, 1) - 1
        if self._left[key] <= 0 and key in self._data:
            old = self._data.pop(key)
            self._bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._data)
