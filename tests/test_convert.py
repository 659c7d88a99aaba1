"""``libra convert`` / ``libra export-projector``: round trips on tiny models and the safe-write rules.

LoRA and stage-1 folders are built by hand here (peft on a ``make_tiny_libra`` base), in the layout
of spec §6, so these tests do not depend on the training code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from libra_cli import convert as core
from libra_cli.errors import InputError
from tests.builders.tiny import make_tiny_libra
from tests.conftest import CXR, FIXTURES

TOK = FIXTURES / "tokenizer"
TOWER = FIXTURES / "tiny-rad-dino"


# ------------------------------------------------------------------ hand-built training layouts


def _make_lora(base: Path, out: Path, seed: int = 1) -> Path:
    """A stage-2 LoRA folder: PEFT adapter (non-zero lora_B) + non_lora_trainables (connector) + config."""
    from peft import LoraConfig, get_peft_model

    from libra_cli.model.modeling import LibraLlamaForCausalLM

    torch.manual_seed(seed)
    lm = LibraLlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    conn = {f"model.mm_projector.{k}": v.detach().clone() + 0.05 * torch.randn_like(v)
            for k, v in lm.model.mm_projector.state_dict().items()}
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=r".*layers\.\d+\.(self_attn|mlp)\.\w+_proj")
    pm = get_peft_model(lm, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    out.mkdir(parents=True)
    pm.save_pretrained(str(out))
    torch.save({f"base_model.model.{k}": v for k, v in conn.items()}, out / "non_lora_trainables.bin")
    shutil.copy(base / "config.json", out / "config.json")
    return out


def _make_stage1(base: Path, out: Path, seed: int = 2) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stage-1 folder: ``mm_projector.bin`` (full keys) + config.json."""
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) for k, v in core.read_projector(base)[0].items()}
    out.mkdir(parents=True)
    torch.save(state, out / "mm_projector.bin")
    shutil.copy(base / "config.json", out / "config.json")
    return out, state


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("convert")
    shutil.copytree(TOWER, w / "tiny-rad-dino")
    make_tiny_libra(w / "base", TOK, tower="../tiny-rad-dino")
    _make_lora(w / "base", w / "lora")
    _make_stage1(w / "base", w / "stage1")
    return w


def _load(path: Path, base: Path | None = None):  # noqa: ANN202
    from libra_cli.checkpoint import load_model

    return load_model(str(path), model_base=str(base) if base else None, dtype="float32", device="cpu")


def _greedy(loaded, n: int = 12) -> list[int]:  # noqa: ANN001
    from libra_cli.generation import GenerationSettings, generate_report

    r = generate_report(loaded, str(CXR / "current.jpg"), str(CXR / "prior.jpg"), None, None,
                        GenerationSettings(max_new_tokens=n))
    return list(r.token_ids)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


# ------------------------------------------------------------------ round trips


@pytest.fixture(scope="module")
def merged(work: Path) -> core.ConvertResult:
    """LoRA + base -> one standalone, sharded, bundled checkpoint (shared by the tests below)."""
    return core.convert(str(work / "lora"), work / "merged", model_base=str(work / "base"), max_shard_size="200KB",
                        bundle_vision_tower=True)


@pytest.fixture(scope="module")
def lora_ref(work: Path) -> tuple[torch.Tensor, list[int]]:
    """Probe logits and greedy tokens of the LoRA folder loaded with --model-base."""
    ref = _load(work / "lora", work / "base")
    return core.probe_logits(ref), _greedy(ref)


def test_lora_merge_equals_model_base(work: Path, merged: core.ConvertResult, lora_ref) -> None:  # noqa: ANN001
    res = merged
    assert res.verified and res.source_kind == "lora" and res.max_abs_diff <= 1e-4
    assert len(res.shards) > 1 and (work / "merged" / "model.safetensors.index.json").is_file()
    out, base = _tensors(work / "merged"), _tensors(work / "base")
    assert set(out) == set(base)  # original layout: same keys, no lora_* / base_layer
    assert not torch.equal(out["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert (work / "merged" / "tokenizer.model").is_file()
    cfg = json.loads((work / "merged" / "config.json").read_text())
    assert cfg["mm_vision_tower"] == "./vision_tower" and cfg["torch_dtype"] == "float32"
    assert cfg["use_cache"] is False and not (work / "merged" / "adapter_config.json").exists()

    a = _load(work / "merged")
    assert a.kind == "full"
    assert torch.allclose(core.probe_logits(a), lora_ref[0], atol=1e-5)
    assert _greedy(a) == lora_ref[1]


def test_float32_bfloat16_float32(work: Path) -> None:
    r1 = core.convert(str(work / "base"), work / "bf16", dtype="bfloat16")
    assert r1.verified and r1.dtype == "bfloat16" and r1.work_dtype == "float32"
    assert r1.max_abs_diff == 0.0 and r1.dtype_drift > 0  # the reload is bit-exact; the cast itself moves logits
    assert all(v.dtype == torch.bfloat16 for v in _tensors(work / "bf16").values())
    r2 = core.convert(str(work / "bf16"), work / "fp32", dtype="float32")
    assert r2.verified and r2.max_abs_diff <= 1e-4
    src, back = _tensors(work / "base"), _tensors(work / "fp32")
    for k, v in src.items():
        assert back[k].dtype == torch.float32
        assert torch.equal(back[k], v.to(torch.bfloat16).float()), k  # one bf16 rounding, nothing else
        assert torch.allclose(back[k], v, rtol=2**-8, atol=1e-30), k
    la, lb = core.probe_logits(_load(work / "base")), core.probe_logits(_load(work / "fp32"))
    assert float((la - lb).abs().max()) <= 0.05 * max(1.0, float(la.abs().max()))


def test_export_projector_sources_load_as_stage2_start(work: Path, merged: core.ConvertResult) -> None:
    from libra_cli.checkpoint.layout import load_bin, strip_trainables_prefix
    from libra_cli.checkpoint.load import load_projector
    from libra_cli.model.modeling import LibraLlamaForCausalLM

    lora_conn = strip_trainables_prefix(load_bin(work / "lora" / "non_lora_trainables.bin"))
    expected = {
        "base": core.read_projector(work / "base")[0],
        "stage1": load_bin(work / "stage1" / "mm_projector.bin"),
        "lora": lora_conn,
        "lora/non_lora_trainables.bin": lora_conn,
        "merged": None,
    }
    expected["merged"] = lora_conn  # the merged checkpoint carries the LoRA folder's connector
    for name, want in expected.items():
        out = work / f"proj-{name.replace('/', '-')}.bin"
        res = core.export_projector(str(work / name), out)
        assert res.num_tensors == len(want) and all(k.startswith("model.mm_projector.") for k in torch.load(out))
        assert res.checked_against_config
        # stage-2 start: a fresh base model + the pretrained projector file
        lm = LibraLlamaForCausalLM.from_pretrained(str(work / "base"), dtype=torch.float32)
        load_projector(lm, load_bin(out))
        got = {f"model.mm_projector.{k}": v for k, v in lm.model.mm_projector.state_dict().items()}
        assert set(got) == set(want), name
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_bundled_folder_runs_offline_from_another_cwd(work: Path, merged: core.ConvertResult, lora_ref,  # noqa: ANN001
                                                     tmp_path: Path) -> None:
    assert merged.bundled_vision_tower and merged.vision_tower == "./vision_tower"
    assert (work / "merged" / "vision_tower" / "preprocessor_config.json").is_file()
    # copy it where neither the base nor ../tiny-rad-dino exist, and run `libra infer` from an unrelated folder
    moved = tmp_path / "deep" / "elsewhere"
    shutil.copytree(work / "merged", moved)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    libra = shutil.which("libra")
    cmd = [libra] if libra else [sys.executable, "-m", "libra_cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.run([*cmd, "infer", str(CXR / "current.jpg"), str(CXR / "prior.jpg"), "--model", str(moved),
                        "--json", "--max-new-tokens", "12", "--device", "cpu", "--dtype", "float32"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["token_ids"] == lora_ref[1]


# ------------------------------------------------------------------ safe writes


def _no_temps(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name]


def test_refuses_non_empty_out_and_force_replaces(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from libra_cli.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(work / "base"), str(out), "--no-verify"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and "Traceback" not in err
    assert (out / "keep.txt").read_text() == "precious"

    with pytest.raises(SystemExit) as exc:
        main(["convert", str(work / "base"), str(out), "--force", "--dtype", "float16", "--json", "--no-verify"])
    assert exc.value.code == 0
    rep = json.loads(capsys.readouterr().out)
    assert not rep["verified"] and rep["dtype"] == "float16" and rep["num_tensors"] > 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert _no_temps(tmp_path)

    with pytest.raises(InputError, match="overlaps"):
        core.convert(str(work / "base"), work / "base", force=True)
    with pytest.raises(InputError, match="model-base"):
        core.convert(str(work / "lora"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_failure_midway_leaves_nothing(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("disk full")

    from libra_cli.checkpoint import layout

    monkeypatch.setattr(layout, "copy_tokenizer_files", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        core.convert(str(work / "base"), tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists() and _no_temps(tmp_path)

    # an existing output survives a failed --force run untouched
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.txt").write_text("a")
    with pytest.raises(RuntimeError):
        core.convert(str(work / "base"), tmp_path / "old", force=True, verify=False)
    assert (tmp_path / "old" / "a.txt").read_text() == "a" and _no_temps(tmp_path)


def test_verification_catches_a_corrupt_write(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import load_file, save_file

    from libra_cli.checkpoint import layout

    real = layout.copy_tokenizer_files

    def corrupt(src, dst):  # noqa: ANN001, ANN202 - runs inside the temp folder, after the weights are written
        f = dst / "model.safetensors"
        sd = load_file(str(f))
        sd["lm_head.weight"] = sd["lm_head.weight"] * 1.5
        save_file(sd, str(f), metadata={"format": "pt"})
        return real(src, dst)

    monkeypatch.setattr(layout, "copy_tokenizer_files", corrupt)
    from libra_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["convert", str(work / "base"), str(tmp_path / "out")])
    assert exc.value.code == 3
    assert "verification failed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and _no_temps(tmp_path)


def test_export_projector_rules(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.bin"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="--force"):
        core.export_projector(str(work / "base"), out)
    assert out.read_bytes() == b"old"
    res = core.export_projector(str(work / "base"), out, force=True, dtype="bfloat16")
    assert res.dtype == "bfloat16" and all(v.dtype == torch.bfloat16 for v in torch.load(out).values())
    bare = tmp_path / "lora-no-trainables"
    shutil.copytree(work / "lora", bare)
    (bare / "non_lora_trainables.bin").unlink()
    with pytest.raises(InputError, match="non_lora_trainables"):
        core.export_projector(str(bare), tmp_path / "q.bin")
    assert not (tmp_path / "q.bin").exists() and _no_temps(tmp_path)


@pytest.mark.parametrize(("text", "size"), [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("200KiB", 200 * 1024),
                                            ("1000", 1000), ("1.5 kb", 1500)])
def test_parse_size(text: str, size: int) -> None:
    assert core.parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "0", "-5GB", "5XB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InputError):
        core.parse_size(text)
