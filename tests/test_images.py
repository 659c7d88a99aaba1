"""Image loading: JPEG/PNG (16-bit too), DICOM (VOI LUT, MONOCHROME1), pad-to-square, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from libra_cli.errors import InputError
from libra_cli.images import ImageProcessorConfig, expand_to_square, load_image, preprocess
from tests.conftest import FIXTURES


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
    assert a.shape == (20, 40, 3) and a[0, 0, 0] == 0 and a[0, -1, 0] == 255
    assert b[0, 0, 0] == 255 and b[0, -1, 0] == 0  # MONOCHROME1 is inverted
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
