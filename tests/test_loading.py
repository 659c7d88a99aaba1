"""Loading decisions that need no GPU to test: device/dtype resolution, device_map only when needed."""

from __future__ import annotations

import pytest
import torch

from libra_cli.checkpoint import hub, layout, runtime
from libra_cli.errors import InputError, ModelLoadError
from tests.conftest import FIXTURES


def test_device_map_only_when_the_model_does_not_fit(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (80 * 2**30, 80 * 2**30))
    assert not runtime.needs_device_map("cuda", 14 * 2**30)  # 7B in bf16 fits one 80 GB card
    assert runtime.needs_device_map("cuda", 140 * 2**30)  # 70B does not
    assert not runtime.needs_device_map("cpu", 140 * 2**30)
    assert not runtime.needs_device_map("cuda:1", 140 * 2**30)  # one GPU named (a shard's): that GPU only


def test_dtype_and_device_resolution() -> None:
    assert runtime.resolve_dtype("auto", "cpu") is torch.float32
    assert runtime.resolve_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(InputError, match="--dtype"):
        runtime.resolve_dtype("int3", "cpu")
    with pytest.raises(InputError, match="--device"):
        runtime.resolve_device("tpu")


def test_folder_kinds_and_missing_weights(tmp_path) -> None:
    assert layout.folder_kind(FIXTURES / "tiny-libra-tac") == "full"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="holds no model weights"):
        layout.folder_kind(tmp_path)
    with pytest.raises(ModelLoadError, match="neither a folder nor a hub id"):
        hub.hub_folder("./does/not/exist")


def test_vision_tower_resolution_order(tmp_path, monkeypatch) -> None:
    from libra_cli.checkpoint.tower import resolve_vision_tower_path

    ckpt, cwd = tmp_path / "ckpt", tmp_path / "work"
    for root in (ckpt, cwd):
        (root / "tower").mkdir(parents=True)
        (root / "tower" / "config.json").write_text("{}")
    monkeypatch.chdir(cwd)
    assert resolve_vision_tower_path("tower", ckpt) == str((ckpt / "tower").resolve())  # checkpoint folder first
    assert resolve_vision_tower_path("tower", tmp_path / "elsewhere") == str((cwd / "tower").resolve())  # then cwd
    assert resolve_vision_tower_path("microsoft/rad-dino", ckpt) == "microsoft/rad-dino"  # then the hub
    assert resolve_vision_tower_path("x", ckpt, override=str(ckpt / "tower")) == str((ckpt / "tower").resolve())
    with pytest.raises(ModelLoadError, match="--vision-tower"):
        resolve_vision_tower_path("../missing-tower", ckpt)
