"""``libra serve`` core without a browser or a model: cache, streamer, settings, file errors, CLI."""

from __future__ import annotations

import threading

import pytest
import torch
from typer.testing import CliRunner

from libra_cli.cli import app
from libra_cli.errors import InputError
from libra_cli.requests import ModelSpec
from libra_cli.serve.server import (
    DECODING_MODES,
    ModelCache,
    ServeOptions,
    Server,
    decoding_settings,
    model_choices,
)
from libra_cli.streaming import QueueStreamer


def test_cache_loads_once_per_key_and_evicts_lru() -> None:
    loads: list[ModelSpec] = []
    cache = ModelCache(capacity=2, loader=lambda k: loads.append(k) or f"model:{k.model}")
    a, b, c = ModelSpec("a"), ModelSpec("b"), ModelSpec("c")
    assert cache.get(a)[0] == "model:a"
    assert cache.get(a)[0] == "model:a"  # cached
    assert ModelSpec("a", dtype="bfloat16") != a  # options are part of the key
    cache.get(b)
    cache.get(a)  # a is now the most recent
    cache.get(c)  # evicts b
    assert loads == [a, b, c] and a in cache and c in cache and b not in cache and len(cache) == 2
    with pytest.raises(InputError):
        ModelCache(capacity=0)


def test_cache_loads_once_under_concurrent_requests() -> None:
    calls = []
    cache = ModelCache(loader=lambda k: calls.append(1) or object())
    threads = [threading.Thread(target=cache.get, args=(ModelSpec("x"),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


class _FakeLoaded:
    """decode() as SentencePiece would: id 9 is half of a multi-byte character until id 10 follows."""

    def decode(self, ids: list[int]) -> str:
        out = ""
        for i in ids:
            out += {9: "\ufffd", 10: "é"}.get(i, f" w{i}")
        return out.replace("\ufffdé", "é")


def test_streamer_yields_growing_text_and_holds_partial_characters() -> None:
    s = QueueStreamer(_FakeLoaded(), timeout=5)
    s.put(torch.tensor([[1, 2, 3]]))  # the prompt: ignored
    for t in (4, 9, 10, 5):
        s.put(torch.tensor([t]))
    s.end()
    assert list(s) == ["w4", "w4é", "w4é w5"]


def test_streamer_reraises_worker_failure() -> None:
    s = QueueStreamer(_FakeLoaded(), timeout=5)
    s.fail(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        list(s)


def test_decoding_settings_modes() -> None:
    g = decoding_settings("Greedy", 24, 0.7, 0.9, 0, 3, 1.0, -1)
    assert (g.temperature, g.num_beams, g.max_new_tokens) == (0.0, 1, 24)
    s = decoding_settings("Sampling", 24, 0.7, 0.9, 0, 3, 1.0, 7)
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.num_beams) == (0.7, 0.9, None, 7, 1)
    b = decoding_settings("Beam search", 24, 0.7, 0.9, 0, 4, 2.0, -1)
    assert (b.temperature, b.num_beams, b.length_penalty) == (0.0, 4, 2.0)
    assert set(DECODING_MODES) == {"Greedy", "Sampling", "Beam search"}
    with pytest.raises(InputError, match="temperature"):
        decoding_settings("Sampling", 24, 0.0, 0.9, 0, 3, 1.0, -1)
    with pytest.raises(InputError, match="max-new-tokens"):
        decoding_settings("Greedy", 0, 0.7, 0.9, 0, 3, 1.0, -1)


def test_model_choices_put_given_models_first_then_registry() -> None:
    ch = model_choices(["/ckpt/mine", "X-iZhang/libra-v1.0-3b"])
    assert ch[0] == "/ckpt/mine" and ch[1] == "X-iZhang/libra-v1.0-3b"
    assert "X-iZhang/libra-v1.0-7b" in ch and len(ch) == len(set(ch))


def test_bad_files_give_messages_not_crashes(tmp_path, cxr_dir) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an x-ray")
    img, err = Server.check_image(str(bad), "current")
    assert img is None and "current X-ray" in err and "notes.txt" in err and "JPEG, PNG or DICOM" in err
    assert str(tmp_path) not in err  # the server's temp path is not shown to the user
    img, err = Server.check_image({"path": str(cxr_dir / "prior.jpg")}, "prior")
    assert err is None and max(img.size) <= 512
    assert Server.check_image(None, "prior") == (None, None)

    loads = []
    server = Server(ServeOptions(models=["m"]), cache=ModelCache(loader=lambda k: loads.append(k)))
    g = decoding_settings("Greedy", 4, 0.7, 0.9, 0, 3, 1.0, -1)
    (u,) = list(server.run(None, None, None, "", "", g))
    assert u.done and "no current X-ray" in u.error
    (u,) = list(server.run(None, str(cxr_dir / "current.jpg"), str(bad), "", "", g))
    assert u.done and u.error.startswith("prior X-ray: not a readable image: notes.txt")
    assert loads == []  # bad input is refused before any model is loaded


def test_serve_cli_help_and_bad_port() -> None:
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0
    for flag in ("--model", "--host", "--port", "--share", "--max-loaded"):
        assert flag in r.output
    r = CliRunner().invoke(app, ["serve", "--port", "70000", "--no-preload"])
    assert r.exit_code != 0 and "not a valid port" in str(r.exception)


def test_port_in_use_is_a_one_line_error() -> None:
    import socket

    from libra_cli.errors import InputError
    from libra_cli.serve.server import check_port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            check_port("127.0.0.1", port)
