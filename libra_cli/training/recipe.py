"""Training recipes: a typed schema, YAML loading, per-stage sections and ``--set key=value`` overrides.

A recipe file holds shared keys at the top level plus optional ``align:`` / ``finetune:`` sections
whose keys override the shared ones for that stage. Every key is checked against :class:`Recipe`
(an unknown key is a one-line error naming the closest valid one) before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError

STAGES = ("align", "finetune")
# transformers' Trainer integrations (report_to) and the package each needs
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
                   "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                   "neptune": "neptune", "azure_ml": "azureml", "codecarbon": "codecarbon", "dagshub": "dagshub",
                   "flyte": "flytekit", "kubeflow": "kfp"}
DISTRIBUTED = ("none", "ddp", "zero2", "zero3", "fsdp")


@dataclass
class Recipe:
    """Every setting of one training stage (names follow the original scripts where they exist)."""

    # model
    model_name_or_path: str = ""  # a Libra checkpoint folder, or a plain LLM folder (connector then built fresh)
    vision_tower: str | None = None  # override / set mm_vision_tower
    mm_projector_type: str = "TAC"  # used when the base is a plain LLM
    mm_vision_select_layer: str = "all"
    pretrain_mm_mlp_adapter: str | None = None  # a stage-1 connector file (or its folder) to start from
    conv_mode: str = "libra_v1"
    dtype: str = "float32"  # weights while training: float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | auto
    # data
    data_path: str = ""
    image_folder: str = "."
    eval_data_path: str | None = None
    model_max_length: int = 2048
    padding_side: str = "right"
    group_by_length: bool = False
    dataloader_num_workers: int = 0
    # optimisation
    output_dir: str = ""
    num_train_epochs: float = 1.0
    max_steps: int = -1
    global_batch_size: int = 16  # kept constant: accumulation = global / (per_device * world size)
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    bf16: bool = False
    fp16: bool = False
    seed: int = 42
    # stage 2
    lora_enable: bool = True
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_bias: str = "none"
    freeze_mm_mlp_adapter: bool = True  # connector frozen in stage 2 ...
    mm_projector_lr: float | None = None  # ... or trained with its own learning rate (freeze_mm_mlp_adapter: false)
    # checkpoints, logging, validation
    save_steps: int = 500
    save_total_limit: int | None = 1
    logging_steps: int = 1
    eval_steps: int | None = None  # None: no validation during training
    eval_generate: bool = True  # real generation scored with libra_cli.metrics on a validation subset
    eval_subset: int = 64
    eval_max_new_tokens: int = 256
    eval_num_beams: int = 1
    eval_metrics: str = "bleu,rouge,temporal"  # any `libra eval --metrics` list (radgraph, ratescore, radcliq, ...)
    eval_radgraph_model: str = "radgraph-xl"  # RadGraph model for RG_E / RG_ER / RG_ER_bar in validation
    metric_for_best_model: str | None = "BLEU4"  # keep the best checkpoint in best/ (None: off)
    report_to: str = "none"  # none | all | comma list: tensorboard, wandb, mlflow, trackio, ... (LOGGER_PACKAGES)
    distributed: str = "none"  # none | ddp | zero2 | zero3 | fsdp (presets: libra recipes list)
    disable_tqdm: bool = False  # no progress bar: one log line per logging step on stderr instead

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, stage: str) -> None:
        """Values that are wrong whatever the files hold (checked before anything is loaded)."""
        def bad(msg: str) -> None:
            raise InputError(f"recipe: {msg}")

        if not self.model_name_or_path:
            bad("model_name_or_path is empty; set it in the recipe or with --set model_name_or_path=PATH")
        if not self.data_path:
            bad("data_path is empty; set it in the recipe or with --set data_path=train.json")
        if not self.output_dir:
            bad("output_dir is empty; set it in the recipe or with --out DIR")
        if self.padding_side not in ("left", "right"):
            bad(f"padding_side must be left or right, got {self.padding_side!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            bad(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.distributed not in DISTRIBUTED:
            bad(f"distributed must be one of {', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        for name in ("global_batch_size", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "model_max_length", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size % self.per_device_train_batch_size:
            bad(f"global_batch_size {self.global_batch_size} is not a multiple of per_device_train_batch_size "
                f"{self.per_device_train_batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            bad(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            bad(f"learning_rate must be > 0, got {self.learning_rate}")
        if stage == "finetune" and self.lora_enable and (self.lora_r < 1 or self.lora_alpha <= 0):
            bad("lora_r must be >= 1 and lora_alpha > 0")
        if self.bf16 and self.fp16:
            bad("bf16 and fp16 are both on; choose one")
        from libra_cli.metrics.registry import METRIC_GROUPS, parse_metrics

        produced = [n for g in parse_metrics(self.eval_metrics) for n in METRIC_GROUPS[g]]
        best = self.metric_for_best_model
        if best and best.lower() not in ("loss", "eval_loss") and best not in produced:
            bad(f"metric_for_best_model {best!r} is not among what eval_metrics gives ({', '.join(produced)})")
        import importlib.util

        for logger in self.loggers():
            if logger not in LOGGER_PACKAGES:
                bad(f"report_to: unknown logger {logger!r}{_closest_of(logger, [*LOGGER_PACKAGES, 'none', 'all'])}; "
                    f"use none, all or a comma list of {', '.join(LOGGER_PACKAGES)}")
            package = LOGGER_PACKAGES[logger]
            if self.report_to != "all" and importlib.util.find_spec(package) is None:
                hint = "pip install 'libra-cli[train]'" if logger == "tensorboard" else f"pip install {package}"
                bad(f"report_to: {logger} needs the {package} package ({hint}), or pass --set report_to=none")

    def loggers(self) -> list[str]:
        """The Trainer integrations to report to (``report_to``: none, all, or a comma list)."""
        value = self.report_to.strip()
        if value in ("none", ""):
            return []
        if value == "all":
            return []  # the Trainer picks every installed integration
        return [x.strip() for x in value.split(",") if x.strip()]

    @property
    def mixed_precision(self) -> str:
        """The mixed precision the recipe asks for (``bf16`` | ``fp16`` | ``no``): a launcher's preset
        (``ACCELERATE_MIXED_PRECISION``) must not autocast another dtype's recipe; ``libra train`` sets it to this."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"

    def gradient_accumulation(self, world_size: int = 1) -> int:
        """Accumulation steps that keep ``global_batch_size`` on ``world_size`` processes."""
        per_step = self.per_device_train_batch_size * max(world_size, 1)
        if self.global_batch_size % per_step:
            raise InputError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_train_batch_size x "
                f"processes ({per_step}); change per_device_train_batch_size"
            )
        return self.global_batch_size // per_step


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(Recipe)}
_HINTS = typing.get_type_hints(Recipe)


def _closest_of(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _closest(key: str, extra: tuple[str, ...] = ()) -> str:
    close = difflib.get_close_matches(key, [*FIELDS, *extra], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the field's type (strings from ``--set`` are parsed as YAML scalars)."""
    import yaml

    hint = _HINTS[key]
    args = typing.get_args(hint)
    optional = type(None) in args or (isinstance(hint, types.UnionType) and type(None) in args)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if isinstance(value, str) and base is not str:
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            pass
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "~") and optional:
        return None
    if value is None:
        if optional:
            return None
        raise InputError(f"{source}: {key} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise InputError(f"{source}: {key} must be {getattr(base, '__name__', base)}, got {value!r}")


def _apply(recipe: dict[str, Any], items: dict[str, Any], source: str) -> None:
    for key, value in items.items():
        if key not in FIELDS:
            raise InputError(f"{source}: unknown key {key!r}{_closest(key, STAGES)}")
        recipe[key] = _coerce(key, value, source)


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["lr=1e-4", "lora_r=8"]`` -> dict (validated later against the schema)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--set {pair!r}: expected key=value, e.g. --set learning_rate=1e-4")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


def load_recipe(path: str | Path | None, stage: str, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Resolve a recipe for ``stage``: defaults < shared keys < ``stage:`` section < overrides."""
    import yaml

    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; use align or finetune")
    values: dict[str, Any] = {}
    if path is not None:
        p = find_recipe(str(path))
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"recipe {p}: not valid YAML{where}; fix the file") from exc
        if not isinstance(data, dict):
            raise InputError(f"recipe {p}: expected a mapping of key: value at the top level")
        shared = {k: v for k, v in data.items() if k not in STAGES}
        _apply(values, shared, f"recipe {p.name}")
        section = data.get(stage) or {}
        if not isinstance(section, dict):
            raise InputError(f"recipe {p.name}: the {stage}: section must be a mapping")
        _apply(values, section, f"recipe {p.name} ({stage})")
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _apply(values, ov, "--set")
    recipe = Recipe(**values)
    recipe.validate(stage)
    return recipe


def shipped(kind: str = "") -> Path:
    """The folder of the recipes shipped inside the package (``kind="accelerate"``: launcher presets)."""
    from importlib.resources import files

    root = Path(str(files("libra_cli").joinpath("recipes")))
    return root / kind if kind else root


def list_recipes() -> dict[str, Path]:
    """Shipped recipes by name (``libra7b``, ``tiny-cpu``, ``accelerate/zero2``, ...)."""
    out = {f.stem: f for f in sorted(shipped().glob("*.yaml"))}
    out.update({f"accelerate/{f.stem}": f for f in sorted(shipped("accelerate").glob("*.yaml"))})
    return out


def find_recipe(name: str) -> Path:
    """A recipe file: a path, else a shipped recipe's name (``libra7b``, ``tiny-cpu.yaml``)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    known = list_recipes()
    key = name[:-5] if name.endswith(".yaml") else name
    if key in known:
        return known[key]
    hint = difflib.get_close_matches(key, list(known), n=1)
    extra = f"did you mean {hint[0]!r}? " if hint else ""
    raise InputError(f"recipe {name} not found; {extra}give a YAML file or a shipped recipe "
                     f"({', '.join(k for k in known if '/' not in k)}; see libra recipes list)")


def save_recipe(recipe: Recipe, folder: str | Path, stage: str) -> Path:
    """Write the resolved recipe (``recipe.yaml``) next to a checkpoint."""
    import yaml

    out = Path(folder) / "recipe.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({"stage": stage, **recipe.to_dict()}, sort_keys=False), encoding="utf-8")
    return out


__all__ = ["Recipe", "load_recipe", "save_recipe", "parse_overrides", "STAGES", "find_recipe", "list_recipes", "shipped"]
