"""The vLLM judge engine: every prompt in one ``generate`` call; prefix caching computes the shared instructions once.

The prompts go in as libra's token ids (the judge's exact tokenisation), and the stop tokens are the
judge's alone (``ignore_eos`` + ``stop_token_ids``; the model's generation config is not merged in), so
greedy judgements equal the transformers engine's. MedGemma (Gemma 3 image-text) runs as its text-only
language model (:func:`text_only_folder`); vLLM is imported here only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError
from libra_cli.metrics.judges.base import GenRequest, cut_at_stop


def vllm_folder(folder: str) -> str:
    """``folder``, or a link farm without a stale ``model.safetensors.index.json`` (crimson-score's
    ``resolve_model_for_vllm``: an index naming shards that are absent beside a full ``model.safetensors``)."""
    index, single = Path(folder) / "model.safetensors.index.json", Path(folder) / "model.safetensors"
    if not (index.is_file() and single.is_file()):
        return folder
    shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
    if all((Path(folder) / s).exists() for s in shards):
        return folder
    clean = Path(tempfile.gettempdir()) / f"libra-vllm-{Path(folder).resolve().name}"
    clean.mkdir(parents=True, exist_ok=True)
    for entry in Path(folder).iterdir():
        if entry.name != index.name and not (clean / entry.name).exists():
            os.symlink(os.path.realpath(entry), clean / entry.name)
    return str(clean)


_TEXT_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                  ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))


def text_only_folder(folder: str) -> str:
    """A Gemma 3 image-text judge (MedGemma) as the text-only ``Gemma3ForCausalLM`` vLLM can load without
    torchvision (its multimodal class imports the image processor): the text config and the language
    model's weights, written once into libra's cache. The judge never sees an image, so nothing changes."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    from libra_cli.atomic import atomic_output
    from libra_cli.metrics.models import libra_cache_dir

    src = Path(folder).resolve()
    out = libra_cache_dir() / "judges" / "text-only" / hashlib.sha256(str(src).encode()).hexdigest()[:16]
    if (out / "config.json").is_file():
        return str(out)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    text = dict(config["text_config"], architectures=["Gemma3ForCausalLM"], model_type="gemma3_text")
    for key in ("dtype", "torch_dtype", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        if key in config and key not in text:
            text[key] = config[key]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        tmp = Path(tmp)
        shards = sorted(src.glob("*.safetensors"))
        for i, shard in enumerate(shards):
            tensors = {}
            with safe_open(str(shard), "pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    new = next((to + name[len(frm):] for frm, to in _TEXT_PREFIXES if name.startswith(frm)), None)
                    if new is not None:
                        tensors[new] = fh.get_tensor(name)
            save_file(tensors, str(tmp / f"model-{i:05d}.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(text, indent=2), encoding="utf-8")
        for entry in src.iterdir():
            if entry.suffix != ".safetensors" and entry.name not in ("config.json", "model.safetensors.index.json") \
                    and entry.is_file():
                (tmp / entry.name).write_bytes(entry.read_bytes())
    return str(out)


class VllmGenerator:
    """A judge model in ``vllm.LLM`` (started on the first call, sized to the prompts)."""

    name = "vllm"

    def __init__(self, folder: str, dtype: str, max_model_len: int | None = None, kv_cache_gb: float | None = None,
                 seed: int = 0, longest: int = 0) -> None:
        """``longest``: prompt + new tokens of the longest request to come (sizes ``max_model_len``, which
        the first call would otherwise fix from its own prompts)."""
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise InputError("--judge-engine vllm needs vLLM, which is not installed; install it with "
                             "bash scripts/install_vllm.sh (docs/engines.md), or use --judge-engine hf") from exc
        self.folder = vllm_folder(folder)
        config = json.loads((Path(self.folder) / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") == "gemma3" and "text_config" in config:
            self.folder = text_only_folder(self.folder)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gb = kv_cache_gb
        self.seed = seed
        self.longest = longest
        self.llm: Any = None

    def _start(self, longest: int) -> None:
        from transformers import AutoConfig
        from vllm import LLM
        from vllm.platforms import current_platform

        config = AutoConfig.from_pretrained(self.folder)
        text = config.get_text_config(decoder=True)
        limit = int(getattr(text, "max_position_embeddings", longest) or longest)
        kw: dict[str, Any] = {"model": self.folder, "dtype": self.dtype, "enable_prefix_caching": True, "seed": self.seed,
                              "max_model_len": self.max_model_len or min(limit, longest), "generation_config": "vllm",
                              "disable_log_stats": True}
        if getattr(config, "vision_config", None) is not None:  # another image-text judge: no image per prompt
            kw["limit_mm_per_prompt"] = {"image": 0}
        if current_platform.is_cpu():
            import psutil

            vm = psutil.virtual_memory()
            kw["gpu_memory_utilization"] = round(max(0.05, min(0.5, 0.8 * vm.available / vm.total)), 2)
            kw["kv_cache_memory_bytes"] = int((self.kv_cache_gb or 1.0) * (1 << 30))
        elif self.kv_cache_gb is not None:
            kw["kv_cache_memory_bytes"] = int(self.kv_cache_gb * (1 << 30))
        self.llm = LLM(**kw)

    def generate(self, prompts: Sequence[Sequence[int]], requests: Sequence[GenRequest]) -> list[list[int]]:
        from vllm import SamplingParams

        if self.llm is None:
            self._start(max(self.longest, *(len(p) + r.max_new_tokens for p, r in zip(prompts, requests, strict=True))))
        params = []
        for r in requests:
            kw: dict[str, Any] = {"max_tokens": r.max_new_tokens, "stop_token_ids": list(r.eos), "ignore_eos": True,
                                  "detokenize": False}
            if r.do_sample:
                kw.update(temperature=r.temperature, top_k=r.top_k or -1, top_p=r.top_p or 1.0)
            else:
                kw["temperature"] = 0.0
            params.append(SamplingParams(**kw))
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [cut_at_stop(list(o.outputs[0].token_ids), r) for o, r in zip(outs, requests, strict=True)]

    def close(self) -> None:
        self.llm = None
