"""Faults a user meets, each reproduced for real: one line naming the file and the fix, exit 2, earlier outputs intact.

Disk full and read-only destinations use a real tmpfs (skipped with the reason when this machine cannot mount).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CXR, FIXTURES

PY = [sys.executable, "-m", "libra_cli"]


def _libra(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    err = next(ln for ln in lines if ln.startswith("error:"))
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr[-2000:]
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs: writing anything sizeable fills it."""
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not permitted'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _read_only(mnt: Path) -> None:
    res = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only here ({res.stderr.strip()})")


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.builders.mimic import make_metadata, write_metadata_csv

    d = tmp_path_factory.mktemp("meta")
    meta, _ = make_metadata(400, seed=1)
    write_metadata_csv(meta, d / "meta.csv.gz")
    return d / "meta.csv.gz"


def test_pair_priors_on_a_full_disk_and_a_read_only_one(small_fs: Path, metadata: Path) -> None:
    keep = small_fs / "pairs.csv"
    keep.write_text("earlier output\n")
    res = _libra("data", "pair-priors", str(metadata), "--out", str(keep))
    _one_line_error(res, "no space left", str(keep))
    assert keep.read_text() == "earlier output\n" and sorted(p.name for p in small_fs.iterdir()) == ["pairs.csv"]
    _read_only(small_fs)
    res = _libra("data", "pair-priors", str(metadata), "--out", str(small_fs / "new.parquet"))
    _one_line_error(res, "read-only", str(small_fs / "new.parquet"))


def test_convert_on_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(FIXTURES / "tiny-libra-tac", model)
    shutil.copytree(FIXTURES / "tiny-rad-dino", tmp_path / "tiny-rad-dino")
    res = _libra("convert", str(model), str(small_fs / "out"), "--no-verify")
    _one_line_error(res, "no space left", str(small_fs / "out"))
    assert not list(small_fs.iterdir())  # no half-written checkpoint, no temp folder


def test_batch_on_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "image": [str(CXR / "current.jpg"), str(CXR / "prior.jpg")],
                                     "text": "x" * 4000}) + "\n" for i in range(2)))
    (small_fs / "filler").write_bytes(b"\0" * (88 << 10))
    res = _libra("batch", str(q), "-m", str(FIXTURES / "tiny-libra-tac"), "--out", str(small_fs / "a.jsonl"),
                 "--max-new-tokens", "2", "--device", "cpu", "-q", "--workers", "0")
    _one_line_error(res, "no space left", str(small_fs))


def test_eval_csv_on_a_read_only_disk(small_fs: Path, tmp_path: Path) -> None:
    refs, preds = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    refs.write_text(json.dumps({"question_id": 1, "reference": "No acute findings."}) + "\n")
    preds.write_text(json.dumps({"question_id": 1, "text": "No acute findings."}) + "\n")
    assert _libra("eval", str(refs), str(preds), "--csv", str(tmp_path / "results.csv")).returncode == 0
    before = (tmp_path / "results.csv").read_text()
    shutil.copy(tmp_path / "results.csv", small_fs / "results.csv")
    _read_only(small_fs)
    res = _libra("eval", str(refs), str(preds), "--csv", str(small_fs / "results.csv"))
    _one_line_error(res, "read-only", str(small_fs / "results.csv"))
    assert (small_fs / "results.csv").read_text() == before


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "tiny-libra-tac", tmp_path / "m")
    shutil.copytree(FIXTURES / "tiny-rad-dino", tmp_path / "tiny-rad-dino")
    for p in tmp_path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return tmp_path / "m"


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_safetensors(damaged: Path, how: str) -> None:
    f = damaged / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3] if how == "truncated" else bytes(range(256)) * 20)
    res = _libra("infer", "-m", str(damaged), str(CXR / "current.jpg"), "--device", "cpu", "--max-new-tokens", "2")
    _one_line_error(res, str(f), "damaged or incomplete")


def test_unsafe_pickle_is_refused_without_running_it(damaged: Path, tmp_path: Path) -> None:
    (damaged / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    code = (f"import torch, pathlib\nclass Evil:\n    def __reduce__(self):\n"
            f"        return (pathlib.Path.touch, (pathlib.Path({str(marker)!r}),))\n"
            f"torch.save({{'x': Evil()}}, {str(damaged / 'pytorch_model.bin')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    res = _libra("infer", "-m", str(damaged), str(CXR / "current.jpg"), "--device", "cpu", "--max-new-tokens", "2")
    _one_line_error(res, "pytorch_model.bin", "never unpickles")
    assert not marker.exists()


def test_remote_code_is_never_run_nor_asked_for(tmp_path: Path) -> None:
    """A config naming custom code: transformers would ask '[y/N]' on a terminal; libra refuses at once."""
    d = tmp_path / "custom"
    d.mkdir()
    marker = tmp_path / "ran"
    (d / "configuration_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                             "from transformers import PretrainedConfig\n"
                                             "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (d / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig":
                                                                                   "configuration_evil.EvilConfig"}}))
    (d / "model.safetensors").write_bytes(b"")
    res = subprocess.run([*PY, "infer", "-m", str(d), str(CXR / "current.jpg")], capture_output=True, text=True,
                         input="y\n", timeout=300)
    _one_line_error(res, "custom code")
    assert not marker.exists()


def test_data_build_refuses_sections_without_the_target(tmp_path: Path, metadata: Path) -> None:
    pairs = tmp_path / "pairs.parquet"
    assert _libra("data", "pair-priors", str(metadata), "--out", str(pairs)).returncode == 0
    sections = tmp_path / "sections.csv"
    sections.write_text("study,impression\ns1,No acute process.\n")
    res = _libra("data", "build", "--pairs", str(pairs), "--sections", str(sections),
                 "--out-json", str(tmp_path / "train.json"))
    _one_line_error(res, "findings", str(sections))
    assert not (tmp_path / "train.json").exists()


def test_extract_sections_out_is_a_file(tmp_path: Path) -> None:
    from tests.builders.mimic import write_report_tree

    root = tmp_path / "files"
    write_report_tree(root, 3, seed=0)
    (tmp_path / "out.csv").write_text("x")
    res = _libra("data", "extract-sections", str(root), "--out", str(tmp_path / "out.csv"))
    _one_line_error(res, "is a file", str(tmp_path / "out.csv"))


def test_dataset_split_is_never_ignored(tmp_path: Path) -> None:
    import datasets

    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"main_image": [str(CXR / "current.jpg")]})})
    ds.save_to_disk(str(tmp_path / "ds"))
    res = _libra("batch", "--dataset", str(tmp_path / "ds"), "--split", "test", "-m", str(FIXTURES / "tiny-libra-tac"),
                 "--out", str(tmp_path / "a.jsonl"))
    _one_line_error(res, "no split 'test'", "train")


def _png_header(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (a decompression bomb's calling card)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12_000, 60_000])  # over libra's limit; over Pillow's bomb limit too
def test_decompression_bombs_are_one_line_errors_in_infer(tmp_path: Path, side: int) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(side, side))
    res = _libra("infer", "-m", str(FIXTURES / "tiny-libra-tac"), str(bomb))
    _one_line_error(res, str(bomb))


def test_importing_libra_leaves_pillow_alone() -> None:
    """Pillow's globals are the user's: importing libra changes neither (its limits apply per image)."""
    code = ("from PIL import Image, ImageFile\nImageFile.LOAD_TRUNCATED_IMAGES = True\nImage.MAX_IMAGE_PIXELS = 123\n"
            "import libra_cli.images, libra_cli.batch.images, libra_cli.generation\n"
            "print(ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "123"]


@pytest.fixture
def slow_server():  # noqa: ANN201
    """Loopback server: /drip sends one byte every 0.3 s, /slowdrip every 4 s; /huge declares 10 GB; /endless streams without a length."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            if self.path == "/huge":
                self.send_header("Content-Length", str(10 * 10**9))
                self.end_headers()
                return
            self.end_headers()
            try:
                for _ in range(2000):
                    if self.path == "/slowdrip":
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(4)
                    elif self.path == "/drip":
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.3)
                    else:
                        self.wfile.write(b"x" * 65536)
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_images_have_a_deadline_and_a_size_cap(slow_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from libra_cli.errors import InputError
    from libra_cli.images import load_image

    monkeypatch.setenv("LIBRA_URL_TIMEOUT", "2")
    monkeypatch.setenv("LIBRA_URL_MAX_MB", "1")
    t0 = time.monotonic()
    with pytest.raises(InputError, match="longer than 2 s"):
        load_image(f"{slow_server}/drip")
    assert time.monotonic() - t0 < 30  # the deadline is 2 s; a per-read timeout alone would wait 600 s (2000 x 0.3 s)
    t0 = time.monotonic()
    with pytest.raises(InputError, match="longer than 2 s"):
        load_image(f"{slow_server}/slowdrip")
    assert time.monotonic() - t0 < 3.5  # ends at the deadline, not when the next byte arrives (4 s)
    with pytest.raises(InputError, match="10000 MB, over the 1 MB limit"):
        load_image(f"{slow_server}/huge")
    with pytest.raises(InputError, match="over the 1 MB limit"):
        load_image(f"{slow_server}/endless")
