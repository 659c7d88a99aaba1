"""Image loading: JPEG/PNG (16-bit too), DICOM (VOI LUT, MONOCHROME1), pad-to-square, bad files;
the single-channel grayscale path equals the RGB path pixel for pixel; per-run cache; opt-in draft."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from libra_cli import images as im
from libra_cli.errors import InputError
from libra_cli.images import ImageProcessorConfig, expand_to_square, load_image, preprocess
from tests.conftest import CXR, FIXTURES


def _dicom(path, arr: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_monochrome_and_scaling(tmp_path) -> None:
    arr = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (20, 1))
    _dicom(tmp_path / "a.dcm", arr)
    _dicom(tmp_path / "b.dcm", arr, "MONOCHROME1")
    a = np.asarray(load_image(tmp_path / "a.dcm"))
    b = np.asarray(load_image(tmp_path / "b.dcm"))
    assert a.shape == (20, 40) and a[0, 0] == 0 and a[0, -1] == 255  # grayscale stays one channel
    assert b[0, 0] == 255 and b[0, -1] == 0  # MONOCHROME1 is inverted
    # DICOM is recognised by content too (no .dcm suffix)
    (tmp_path / "noext").write_bytes((tmp_path / "a.dcm").read_bytes())
    assert np.array_equal(np.asarray(load_image(tmp_path / "noext")), a)


def test_16bit_png_is_scaled_not_clipped(tmp_path) -> None:
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = np.asarray(load_image(tmp_path / "x.png"))
    assert out.max() == 255 and out.min() == 0
    assert len(np.unique(out)) > 200  # PIL's convert("RGB") would saturate almost everything


def test_pad_to_square_fill_and_processor() -> None:
    cfg = ImageProcessorConfig.from_pretrained(FIXTURES / "tiny-rad-dino")
    assert cfg.pad_color == (135, 135, 135)
    img = Image.new("RGB", (100, 40), (255, 255, 255))
    sq = expand_to_square(img, cfg.pad_color)
    assert sq.size == (100, 100) and sq.getpixel((0, 0)) == (135, 135, 135) and sq.getpixel((50, 50)) == (255, 255, 255)
    x = preprocess(img, cfg)
    assert x.shape == (3, 70, 70) and x.dtype == np.float32
    assert abs(float(x[0, 0, 0]) - (-0.004987)) < 1e-5  # the padded border normalises to -0.004987, not 0


@pytest.mark.parametrize("content,match", [(None, "not found"), (b"hello, not an image", "not a readable image")])
def test_bad_images(tmp_path, content, match) -> None:
    p = tmp_path / "x.jpg"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_image(p)


def test_url_images_from_a_local_server(tmp_path) -> None:
    import functools
    import http.server
    import threading

    Image.new("RGB", (30, 20), (10, 200, 30)).save(tmp_path / "x.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert load_image(f"{url}/x.png").getpixel((0, 0)) == (10, 200, 30)
        with pytest.raises(InputError, match="cannot download image"):
            load_image(f"{url}/missing.png")
    finally:
        server.shutdown()


def _reference(img: Image.Image, cfg: ImageProcessorConfig, pad: bool) -> np.ndarray:
    """The original pipeline, spelled out: RGB first, then pad, resize, crop, float64 rescale, normalise."""
    img = img.convert("RGB")
    if pad and img.width != img.height:
        side = max(img.size)
        canvas = Image.new("RGB", (side, side), cfg.pad_color)
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    w, h = im._resize_size(*img.size, cfg.size)
    arr = np.asarray(img.resize((w, h), resample=im._RESAMPLE[cfg.resample], reducing_gap=None))
    arr = im._center_crop(arr, cfg.crop_size["height"], cfg.crop_size["width"])
    arr = (arr.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    arr = (arr - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return arr.transpose(2, 0, 1)


CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "LA"])
def test_single_channel_path_equals_rgb_path(mode: str) -> None:
    """Random images (wide, tall, odd sizes), equal and per-channel pad colours, crops that pad: exact."""
    rng = np.random.default_rng(0)
    cfgs = [ImageProcessorConfig(size={"shortest_edge": 17}, crop_size={"height": 17, "width": 17}),
            ImageProcessorConfig(size={"shortest_edge": 24}, crop_size={"height": 16, "width": 30}, resample=2,
                                 image_mean=CLIP_MEAN, image_std=CLIP_STD)]
    for w, h in [(61, 40), (40, 61), (33, 33), (97, 12), (7, 50)]:
        if mode == "RGB":
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
        else:
            img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert(mode)
        loaded = load_image(img)
        assert loaded.mode == ("RGB" if mode == "RGB" else "L")
        for cfg in cfgs:
            for pad in (True, False):
                assert np.array_equal(preprocess(loaded, cfg, pad), _reference(loaded, cfg, pad)), (w, h, pad)


def test_full_size_xrays_are_decoded_single_channel_and_exact() -> None:
    cfg = ImageProcessorConfig()  # RAD-DINO: 518 px
    for name in ("current.jpg", "prior.jpg"):
        img = load_image(CXR / name)
        assert img.mode == "L"
        out = im.load_and_preprocess(CXR / name, cfg, cache=False)
        assert out.shape == (3, 518, 518) and out.flags.c_contiguous
        assert np.array_equal(out, _reference(img, cfg, True))


def test_per_run_cache(tmp_path) -> None:
    cfg = ImageProcessorConfig.from_pretrained(FIXTURES / "tiny-rad-dino")
    p = tmp_path / "x.png"
    Image.fromarray(np.arange(40 * 60, dtype=np.uint16).reshape(40, 60).astype(np.uint8)).save(p)
    first = im.load_and_preprocess(p, cfg)
    hits = im.CACHE.hits
    again = im.load_and_preprocess(p, cfg)
    assert im.CACHE.hits == hits + 1 and np.array_equal(first, again)
    again[:] = 0  # callers get copies: the cached array is untouched
    assert np.array_equal(im.load_and_preprocess(p, cfg), first)
    Image.new("L", (60, 40), 7).save(p)  # a changed file is a new entry
    assert not np.array_equal(im.load_and_preprocess(p, cfg), first)
    assert np.array_equal(im.load_and_preprocess(p, cfg, pad=False), preprocess(load_image(p), cfg, pad=False))


def test_many_in_threads_equals_one_by_one() -> None:
    cfg = ImageProcessorConfig.from_pretrained(FIXTURES / "tiny-rad-dino")
    files = [CXR / "current.jpg", CXR / "prior.jpg", CXR / "current.jpg"]
    many = im.load_and_preprocess_many(files, cfg, workers=2)
    assert len(many) == 3 and many[0] is many[2]  # equal sources are processed once
    for f, a in zip(files, many, strict=True):
        assert np.array_equal(a, im.load_and_preprocess(f, cfg, cache=False))


def test_jpeg_draft_is_opt_in_and_close() -> None:
    """Reduced-size JPEG decoding is off by default; on, it decodes smaller and differs a little."""
    from dataclasses import replace

    cfg = ImageProcessorConfig()
    assert cfg.draft_size is None
    draft = replace(cfg, jpeg_draft=True)
    assert draft.draft_size == 1036
    assert load_image(CXR / "current.jpg", draft.draft_size).size == (1528, 1272)  # 1/2 scale keeps >= 1036 px
    exact = im.load_and_preprocess(CXR / "current.jpg", cfg, cache=False)
    approx = im.load_and_preprocess(CXR / "current.jpg", draft, cache=False)
    grey = np.abs(exact - approx).max() * cfg.image_std[0] * 255
    assert 0 < grey <= 16  # measured: at most 5 grey levels at 518 px (docs/performance.md)
