"""Running a judge over pairs: the model found offline, responses cached per pair, generated in resumable chunks.

Each pair's response is stored in libra's scorer-output cache as soon as its chunk is generated, keyed
by the judge, the model's commit, the engine and dtype, the exact prompt token ids and generation
settings; a rerun (or an interrupted run started again) generates only what is missing. Scores are
parsed from the stored responses every time (cheap), so a parser fix needs no new generation.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError
from libra_cli.metrics.cache import text_key
from libra_cli.metrics.judges import ENGINES, get_judge
from libra_cli.metrics.judges.base import JudgeResult, TextGenerator
from libra_cli.metrics.models import SCORER_MODELS, HubRepo, MissingModel, hub_cache_dir, snapshot

DTYPES = ("float16", "bfloat16", "float32")
JUDGE_FILES = ("*.json", "*.model", "*.txt", "*.jinja", "*.safetensors")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class JudgeOptions:
    """How LLM judges run: engine (hf | vllm | openai), server URL, model variant, dtype, batch size."""

    engine: str = "hf"
    url: str | None = None
    model: str | None = None  # alias (radphi2), hub id, or local folder; None: the judge's default
    dtype: str | None = None  # None: the dtype the judge's package loads it in
    batch_size: int = 8
    device: str | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # engine keyword arguments (vLLM: max_model_len, kv_cache_gb)
    contexts: Sequence[dict[str, Any] | None] | None = None  # CRIMSON's patient context per pair (Age, Indication, ...)

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"unknown --judge-engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InputError(f"unknown --judge-dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.engine == "openai" and not self.url:
            raise InputError("--judge-engine openai needs --judge-url http://HOST:PORT/v1 (an OpenAI-compatible server)")
        if self.url and self.engine != "openai":
            raise InputError("--judge-url is for --judge-engine openai; add it")
        if self.batch_size < 1:
            raise InputError("--judge-batch-size must be at least 1")


def _variant(judge_name: str, model: str) -> str | None:
    judge = get_judge(judge_name)
    for alias, spec in judge.models.items():
        if model.lower() in (alias.lower(), spec.repo_id.lower()):
            return alias
    return None


def model_for(judge_name: str, model: str | None) -> str | None:
    """``--judge-model`` as it applies to this judge: a published variant of another judge leaves this one at its
    default (``--metrics green,crimson --judge-model radphi2``)."""
    from libra_cli.metrics.judges import JUDGES

    if model is None or _variant(judge_name, model) is not None:
        return model
    return None if any(_variant(j, model) for j in JUDGES if j != judge_name) else model


def scorer_key(judge_name: str, model: str | None) -> str | None:
    """The ``libra eval download`` key of a published judge variant (None: another hub id or a folder)."""
    judge = get_judge(judge_name)
    alias = _variant(judge_name, model_for(judge_name, model) or judge.default_model)
    if alias is None:
        return None
    return judge_name if alias == judge.default_model else f"{judge_name}:{alias}"


def _repo(repo_id: str, weights: bool) -> HubRepo:
    required: tuple[tuple[str, ...], ...] = (("config.json",), ("tokenizer_config.json",))
    return HubRepo(repo_id, JUDGE_FILES, required + ((_WEIGHTS,) if weights else ()))


def resolve(judge_name: str, options: JudgeOptions, cache_dir: Path | None = None) -> tuple[str, str, str]:
    """(local folder, model id as the package sees it, commit) of the judge model, without network.

    The openai engine needs only the tokenizer and config locally (the server holds the weights).
    """
    judge = get_judge(judge_name)
    model = model_for(judge_name, options.model) or judge.default_model
    key = scorer_key(judge_name, model)
    if key is None and Path(model).expanduser().is_dir():
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise InputError(f"--judge-model {model}: no config.json in that folder; give a judge model folder")
        return str(folder), str(model), f"local:{folder.resolve()}"
    repo_id = SCORER_MODELS[key].repos[0].repo_id if key else model
    if key is None and "/" not in model:
        known = ", ".join([*judge.models, *(m.repo_id for m in judge.models.values())])
        raise InputError(f"--judge-model {model!r} is not a {judge.metric} judge or a folder; choose from {known}")
    try:
        snap, commit = snapshot(_repo(repo_id, options.engine != "openai"), cache_dir or hub_cache_dir())
    except FileNotFoundError as exc:
        if key is not None:
            raise MissingModel(key, str(exc)) from None
        raise InputError(f"judge model {model} is not in the local Hugging Face cache ({exc}); run `libra eval download "
                         f"--metrics {judge_name} --judge-model {model}` once on a machine with network") from None
    return str(snap), repo_id, commit


def check(judge_name: str, options: JudgeOptions, cache_dir: Path | None = None) -> None:
    """Everything a judge run needs, checked in milliseconds (no model loads, nothing is imported)."""
    options.validate()
    resolve(judge_name, options, cache_dir)
    if options.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise InputError("--judge-engine vllm needs vLLM, which is not installed; install it with bash "
                         "scripts/install_vllm.sh (docs/engines.md), or use --judge-engine hf")
    if options.engine == "openai" and importlib.util.find_spec("openai") is None:
        raise InputError("--judge-engine openai needs the openai client: pip install openai")


def make_generator(options: JudgeOptions, folder: str, model_id: str, dtype: str, tokenizer: Any,
                   longest: int = 0) -> TextGenerator:
    """The engine behind ``options.engine``; vLLM and openai are imported only when chosen."""
    if options.engine == "vllm":
        from libra_cli.metrics.judges.vllm_gen import VllmGenerator

        return VllmGenerator(folder, dtype, longest=longest, **options.extra)
    if options.engine == "openai":
        from libra_cli.metrics.judges.openai_gen import OpenAIGenerator

        assert options.url is not None
        return OpenAIGenerator(options.url, model_id, tokenizer, concurrency=max(options.batch_size, 16))
    from libra_cli.metrics.judges.hf import HfGenerator

    return HfGenerator(folder, dtype, options.device, options.batch_size)


def load_tokenizer(judge: Any, folder: str) -> Any:
    from transformers import AutoTokenizer

    return judge.prepare_tokenizer(AutoTokenizer.from_pretrained(folder, **judge.tokenizer_kwargs))


def generation_config(folder: str) -> Any:
    """The model's ``generation_config.json`` (None when it has none, as transformers then derives one)."""
    if not (Path(folder) / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(folder)


@dataclass
class JudgeRun:
    """What a judge produced: per-pair results and responses, and how the run went."""

    results: list[JudgeResult]
    responses: list[str]
    model: str
    commit: str
    stats: dict[str, Any]


def run(judge_name: str, refs: Sequence[str], hyps: Sequence[str], options: JudgeOptions, cache: Any,
        cache_dir: Path | None = None, generator: TextGenerator | None = None) -> JudgeRun:
    """Judge every pair; cached responses are reused, the rest generated in chunks that are saved as they finish."""
    from libra_cli.console import err_console, progress_bar

    judge = get_judge(judge_name)
    options.validate()
    folder, model_id, commit = resolve(judge_name, options, cache_dir)
    alias = _variant(judge_name, model_for(judge_name, options.model) or judge.default_model)
    dtype = options.dtype or judge.models[alias or judge.default_model].dtype
    tokenizer = load_tokenizer(judge, folder)
    if options.contexts is not None and judge_name == "crimson":  # GREEN's prompt has no context
        if len(options.contexts) != len(refs):
            raise InputError(f"{len(options.contexts)} patient contexts for {len(refs)} pairs; give one per pair (None for none)")
        judge.contexts = list(options.contexts)  # type: ignore[attr-defined]
    prompts = judge.prompt_ids(tokenizer, refs, hyps, model_id)
    requests = judge.requests(prompts, tokenizer, generation_config(folder))
    engine_tag = f"{options.engine}:{dtype}" if options.engine != "openai" else "openai"
    ns = f"judge:{judge_name}|{model_id}@{commit}|{engine_tag}"
    keys = [text_key(",".join(map(str, p)), r.key()) for p, r in zip(prompts, requests, strict=True)]
    stored = cache.get_many(ns, keys)
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)  # a pair repeated in the input is generated once
    todo = [i for k, i in first.items() if k not in stored]
    t0 = time.perf_counter()
    new_tokens = 0
    if todo:
        longest = max(len(prompts[i]) + requests[i].max_new_tokens for i in todo)
        gen = generator or make_generator(options, folder, model_id, dtype, tokenizer, longest)
        # hf: two batches per saved chunk; vllm / openai: enough prompts for their own batching to fill up
        chunk = options.batch_size * 2 if options.engine == "hf" else max(options.batch_size * 16, 64)
        console = err_console()
        with progress_bar(console, judge.metric, "pairs", transient=True,
                          disable=not (options.progress and console.is_terminal)) as bar:
            task = bar.add_task(judge.metric, total=len(todo), rate="")
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                ids = gen.generate([prompts[i] for i in part], [requests[i] for i in part])
                fresh = {keys[i]: {"response": judge.response(tokenizer, prompts[i], out), "tokens": len(out)}
                         for i, out in zip(part, ids, strict=True)}
                cache.put_many(ns, fresh)
                stored.update(fresh)
                new_tokens += sum(len(o) for o in ids)
                done = start + len(part)
                bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.2f} pairs/s")
        if generator is None:
            gen.close()
    seconds = time.perf_counter() - t0
    responses = [stored[k]["response"] for k in keys]
    stats = {"engine": options.engine, "dtype": dtype if options.engine != "openai" else None, "pairs": len(keys),
             "generated": len(todo), "cached": len(keys) - len(todo), "seconds": seconds, "new_tokens": new_tokens,
             "pairs_per_s": (len(todo) / seconds) if todo and seconds > 0 else None}
    return JudgeRun([judge.score(r) for r in responses], responses, model_id, commit, stats)
