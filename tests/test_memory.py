"""Memory pre-flight (checkpoint/memory.py): sizes from the files, --dtype auto on a CPU, one-line refusals.

Checkpoints of any size are faked with header-only safetensors files (the estimator reads headers, never
tensors), so a 7B or a 4 TB model costs nothing here.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CXR, FIXTURES

MODEL = FIXTURES / "tiny-libra-tac"
GB = 1e9


def header_only(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file holding only its header (what the estimator reads)."""
    header: dict = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * {"F32": 4, "BF16": 2, "F16": 2}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.fixture
def giant(tmp_path: Path) -> Path:
    """The fixture checkpoint plus a 4 TB (float32) tensor: fits on no machine."""
    folder = tmp_path / "giant"
    shutil.copytree(MODEL, folder)
    shutil.copytree(FIXTURES / "tiny-rad-dino", tmp_path / "tiny-rad-dino")
    header_only(folder / "model-giant.safetensors", {"model.giant": ("F32", [10**12])})
    return folder


def seven_b(tmp_path: Path) -> tuple[Path, object]:
    """A libra-v1.0-7b-shape checkpoint (Llama-2-7B + TAC, bf16) as header-only shards, and its config."""
    import torch

    from libra_cli.model.modeling import BACKBONES
    from tests.builders.tiny import libra_config

    cfg = libra_config("libra", "TAC", "../rad-dino", mm_hidden=768, hidden=4096, layers=32, heads=32, kv_heads=32,
                       vocab=32000, intermediate=11008)
    cfg.torch_dtype = "bfloat16"
    with torch.device("meta"):
        model = BACKBONES["libra"][1](cfg)
    folder = tmp_path / "libra-7b"
    folder.mkdir()
    cfg.save_pretrained(folder)
    tensors = {k: ("BF16", list(v.shape)) for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    header_only(folder / "model-00001-of-00001.safetensors", tensors)
    return folder, cfg


def test_weight_files_count_every_parameter_of_the_fixture() -> None:
    from safetensors.torch import load_file

    from libra_cli.checkpoint.memory import weight_files

    files = weight_files(MODEL)
    numel = sum(t.numel() for t in load_file(str(MODEL / "model.safetensors")).values())
    assert files.params == numel
    assert files.numel == {"float32": numel}
    assert files.bytes_as("bfloat16") == 2 * numel


def test_index_total_size_when_there_are_no_safetensors(tmp_path: Path) -> None:
    from libra_cli.checkpoint.memory import weight_files

    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 2_000_000}}))
    files = weight_files(tmp_path, "float16")
    assert files.params == 1_000_000 and files.bytes_as("float32") == 4_000_000


def test_the_issue_case_7b_on_a_24_gib_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """7B in bf16 on a machine with 22 GB free: auto runs it in bfloat16 (native bf16); float32 is refused,
    naming --dtype bfloat16 (the issue: float32 was killed by the kernel after 3 min 48 s at 23.9 GB)."""
    from libra_cli.checkpoint import memory

    folder, cfg = seven_b(tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (int(22 * GB), "MemAvailable"))
    monkeypatch.setenv("LIBRA_CPU_BF16", "1")
    files = memory.weight_files(folder)
    assert 6.7e9 < files.params < 6.9e9  # Llama-2-7B (6.74 B) + TAC
    assert memory.kv_bytes_per_token(cfg, 2) == 2 * 32 * 4096 * 2  # 0.5 MiB per token in bf16
    name, est = memory.preflight(folder, cfg, "auto", "cpu")
    assert name == "bfloat16" and est.fits
    assert 13 * GB < est.total < 1.25 * files.bytes_as("bfloat16")
    with pytest.raises(memory.NotEnoughMemory) as exc:
        memory.preflight(folder, cfg, "float32", "cpu", what="libra-7b")
    msg = str(exc.value)
    assert "\n" not in msg and "--dtype bfloat16" in msg and "libra-7b" in msg
    # 10 beams x 512 tokens at batch 8: the KV cache no longer fits next to the weights
    with pytest.raises(memory.NotEnoughMemory, match="lower --batch-size / --num-beams"):
        memory.preflight(folder, cfg, "auto", "cpu", memory.Workload(batch_size=8, num_beams=10))


def test_auto_dtype_on_cpus_without_native_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 where it fits; on AVX-512 CPUs bfloat16 when float32 does not fit; never bf16 on AVX2 CPUs."""
    from libra_cli.checkpoint import memory

    folder, cfg = seven_b(tmp_path)
    free = {"gb": 64.0}
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (int(free["gb"] * GB), "MemAvailable"))
    monkeypatch.setenv("LIBRA_CPU_BF16", "emulated")
    assert memory.choose_dtype("auto", "cpu", cfg, folder) == "float32"
    free["gb"] = 22.0
    assert memory.choose_dtype("auto", "cpu", cfg, folder) == "bfloat16"
    monkeypatch.setenv("LIBRA_CPU_BF16", "0")
    monkeypatch.setattr(memory, "cpu_flags", lambda: {"avx2", "fma"})
    assert memory.cpu_bf16_class() == "slow"
    assert memory.choose_dtype("auto", "cpu", cfg, folder) == "float32"
    with pytest.raises(memory.NotEnoughMemory, match="very slow on this CPU"):
        memory.preflight(folder, cfg, "auto", "cpu")
    # a float32 checkpoint that fits stays float32 even where bf16 is native (the fixture's exact numerics)
    monkeypatch.setenv("LIBRA_CPU_BF16", "1")
    from libra_cli.checkpoint.load import read_config

    assert memory.choose_dtype("auto", "cpu", read_config(MODEL), MODEL) == "float32"


def test_check_can_be_turned_off(giant: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_cli.checkpoint import memory
    from libra_cli.checkpoint.load import read_config

    monkeypatch.setenv("LIBRA_MEMORY_CHECK", "0")
    name, est = memory.preflight(giant, read_config(giant), "float32", "cpu")
    assert name == "float32" and not est.fits


def test_available_memory_is_read_from_the_system() -> None:
    from libra_cli.checkpoint.memory import available_bytes

    free, source = available_bytes("cpu")
    assert free > 0 and source in ("MemAvailable", "cgroup limit")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "libra_cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_infer_that_cannot_fit_stops_with_one_line(giant: Path, tmp_path: Path) -> None:
    out = _cli("infer", "-m", str(giant), str(CXR / "current.jpg"), str(CXR / "prior.jpg"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "not enough memory" in lines[0] and "a smaller model" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_batch_that_cannot_fit_writes_nothing(giant: Path, tmp_path: Path) -> None:
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": "a", "image": str(CXR / "current.jpg"), "prior": str(CXR / "prior.jpg")}) + "\n")
    answers = tmp_path / "answers.jsonl"
    out = _cli("batch", "-m", str(giant), str(q), "--out", str(answers), "-q", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "not enough memory" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["giant", "q.jsonl", "tiny-rad-dino"]


def test_doctor_prints_the_estimate(tmp_path: Path) -> None:
    out = _cli("doctor", "--model", str(MODEL), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    mem = json.loads(out.stdout)["memory"]
    assert mem["auto_dtype"] == "float32" and mem["stored_dtype"] == "float32"
    assert mem["estimates"]["float32"]["fits"] is True
    assert mem["estimates"]["float32"]["parts_gb"]["weights"] > mem["estimates"]["bfloat16"]["parts_gb"]["weights"]
    text = _cli("doctor", "--model", str(MODEL), cwd=tmp_path)
    assert "float32 (auto)" in text.stdout and "needs GB" in text.stdout


def test_training_that_cannot_fit_names_what_to_change(giant: Path) -> None:
    from libra_cli.checkpoint import memory
    from libra_cli.checkpoint.load import read_config
    from libra_cli.training.model import check_training_memory
    from libra_cli.training.recipe import Recipe

    recipe = Recipe(model_name_or_path=str(giant), lora_enable=False, per_device_train_batch_size=4)
    with pytest.raises(memory.NotEnoughMemory) as exc:
        check_training_memory(recipe, "finetune", str(giant), read_config(giant))
    msg = str(exc.value)
    assert "\n" not in msg and "gradient_checkpointing: true" in msg and "lora_enable: true" in msg


def test_scorer_guard_refuses_before_the_model_loads(tmp_path: Path) -> None:
    from libra_cli.checkpoint.memory import NotEnoughMemory, scorer_guard
    from libra_cli.metrics.models import ResolvedModel
    from libra_cli.metrics.scoring import ModelOptions, Scorers

    huge = tmp_path / "weights.th"
    with open(huge, "wb") as fh:
        fh.truncate(10**13)  # sparse: 10 TB on paper, nothing on disk
    s = Scorers(ModelOptions(device="cpu", memory_guard=scorer_guard(64, "cpu")))
    s._resolved["radgraph:radgraph"] = ResolvedModel("radgraph:radgraph", {"radgraph": tmp_path}, {})
    built = []
    with pytest.raises(NotEnoughMemory, match="scorer model 'radgraph:radgraph'"):
        s._load("radgraph:radgraph", lambda: built.append(1))
    assert not built


def test_serve_unloads_the_least_recently_used_model_when_the_next_does_not_fit() -> None:
    from libra_cli.checkpoint.memory import NotEnoughMemory
    from libra_cli.requests import ModelSpec as ModelKey
    from libra_cli.serve.server import ModelCache

    cache = ModelCache(capacity=2, loader=lambda key: key.model)
    cache.get(ModelKey("a"))

    def loader(key: ModelKey) -> str:  # room for one model only
        if ModelKey("a") in cache:
            raise NotEnoughMemory("not enough memory")
        return key.model

    cache._loader = loader
    assert cache.get(ModelKey("b"))[0] == "b"
    assert ModelKey("a") not in cache and ModelKey("b") in cache
    nothing_fits = ModelCache(capacity=2, loader=lambda key: (_ for _ in ()).throw(NotEnoughMemory("x")))
    with pytest.raises(NotEnoughMemory):
        nothing_fits.get(ModelKey("c"))
