"""The two training stages on transformers' ``Trainer`` (so DDP / DeepSpeed / FSDP come from accelerate).

Stage 1 (``align``): encoder and LLM frozen, only the connector learns; every checkpoint holds the
connector file + ``config.json`` (docs/reference-format.md#training).
Stage 2 (``finetune``): PEFT LoRA on every ``nn.Linear`` of the text model (not ``lm_head``, the
connector or the encoder); the connector is frozen or trained on its own learning rate; every
checkpoint holds the PEFT adapter, the non-LoRA trainables and ``config.json``: the layout
``libra_cli.checkpoint.load_model(out, model_base=base)`` reads. Which files those are is
``libra_cli.checkpoint.layout``'s business. Each checkpoint also carries the resolved ``recipe.yaml``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from libra_cli.checkpoint import layout
from libra_cli.errors import InputError, ModelLoadError
from libra_cli.training.recipe import Recipe, save_recipe


# ---------------------------------------------------------------------- model
@dataclass
class Built:
    model: Any  # the Libra LM (LoRA-wrapped in stage 2)
    base: Any  # the Libra LM itself
    tokenizer: Any
    processor: Any
    config: Any
    folder: str
    info: dict[str, Any] = field(default_factory=dict)


def _libra_config(folder: str, recipe: Recipe) -> Any:
    """The Libra config of ``folder``; a plain LLM config gets the multimodal fields of the recipe."""
    from transformers import AutoConfig

    from libra_cli.checkpoint.load import read_config
    from libra_cli.model import modeling

    config = read_config(folder)
    if config.model_type in modeling.BACKBONES:
        if recipe.vision_tower:
            config.mm_vision_tower = recipe.vision_tower
        return config
    if config.model_type not in modeling.BASE_TO_LIBRA:
        raise ModelLoadError(f"{folder}: model_type {config.model_type!r} is neither a Libra model nor a supported LLM")
    if not recipe.vision_tower:
        raise InputError(f"{folder} is a plain LLM; set vision_tower (e.g. microsoft/rad-dino) in the recipe")
    libra_type = modeling.BASE_TO_LIBRA[config.model_type]
    base = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
    cfg = modeling.BACKBONES[libra_type][0](**base)
    from libra_cli.checkpoint.hub import hub_folder

    tower_cfg = AutoConfig.from_pretrained(hub_folder(recipe.vision_tower, allow_patterns=["*.json"], what="vision tower"),
                                           trust_remote_code=False)
    tower_cfg = getattr(tower_cfg, "vision_config", tower_cfg)
    cfg.architectures = [modeling.BACKBONES[libra_type][1].__name__]
    mm = dict(mm_vision_tower=recipe.vision_tower, mm_projector_type=recipe.mm_projector_type,
              mm_hidden_size=tower_cfg.hidden_size, mm_vision_select_layer=recipe.mm_vision_select_layer,
              mm_vision_select_feature="patch", mm_use_im_start_end=False, mm_use_im_patch_token=False,
              image_aspect_ratio="pad", tokenizer_padding_side="right", use_mm_proj=True)
    for k, v in mm.items():
        setattr(cfg, k, v)
    return cfg


def lora_target_regex(model: Any) -> str:
    """A PEFT target regex naming every ``nn.Linear`` of the text model (not lm_head, connector, encoder)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    keep = [n for n in names if n != "lm_head" and not n.startswith(("model.mm_projector", "model.vision_tower"))]
    if not keep:
        raise InputError("no nn.Linear found in the text model for LoRA")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in keep})
    pattern = rf"^model\.(?!mm_projector\.|vision_tower\.).*\.({'|'.join(map(re.escape, leaves))})$"
    chosen = [n for n in names if re.fullmatch(pattern, n)]
    if sorted(chosen) != sorted(keep):  # pragma: no cover - a leaf name shared with a top-level module
        pattern = "^(" + "|".join(map(re.escape, keep)) + ")$"
    return pattern


def build_model(recipe: Recipe, stage: str) -> Built:
    """Base model + encoder + tokenizer, with only the stage's parameters trainable."""
    from transformers import set_seed

    from libra_cli.checkpoint.hub import hub_folder
    from libra_cli.checkpoint.load import build_lm, load_projector
    from libra_cli.checkpoint.runtime import DTYPES, resolve_attention
    from libra_cli.checkpoint.tokenizer import load_tokenizer
    from libra_cli.checkpoint.tower import load_vision_tower
    from libra_cli.console import quiet_transformers

    quiet_transformers()
    # the recipe seed also fixes what is randomly initialised here (LoRA A, a fresh connector): otherwise runs
    # differ and each DDP rank starts from its own LoRA weights (the Trainer only seeds after the model is built)
    set_seed(recipe.seed)
    folder = hub_folder(recipe.model_name_or_path, what="model")
    config = _libra_config(folder, recipe)
    config.use_cache = False
    dtype = DTYPES[recipe.dtype]
    attn = recipe.attn_implementation
    if attn == "auto":
        attn = resolve_attention("auto", "cuda" if torch.cuda.is_available() else "cpu", dtype)
    lm = build_lm(folder, config, dtype, attn)
    if recipe.pretrain_mm_mlp_adapter:
        load_projector(lm, layout.load_bin(layout.projector_source(recipe.pretrain_mm_mlp_adapter)))
    tower = load_vision_tower(config, checkpoint_dir=folder, override=recipe.vision_tower, dtype=dtype)
    lm.set_vision_tower(tower)
    tokenizer = load_tokenizer(folder, model_max_length=recipe.model_max_length, padding_side=recipe.padding_side)

    lm.requires_grad_(False)
    model = lm
    if stage == "align":
        lm.connector.requires_grad_(True)
        config.tune_mm_mlp_adapter = True
    else:
        if not recipe.lora_enable:  # full fine-tune of the text model
            lm.requires_grad_(True)
            lm.model.vision_tower.requires_grad_(False)
            lm.connector.requires_grad_(False)
        if not recipe.freeze_mm_mlp_adapter:
            lm.connector.requires_grad_(True)
        config.freeze_mm_mlp_adapter = recipe.freeze_mm_mlp_adapter
        config.mm_projector_lr = recipe.mm_projector_lr
        if recipe.lora_enable:
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                              bias=recipe.lora_bias, target_modules=lora_target_regex(lm), task_type="CAUSAL_LM")
            model = get_peft_model(lm, lcfg)
            model.peft_config["default"].base_model_name_or_path = recipe.model_name_or_path
            if not recipe.freeze_mm_mlp_adapter:  # PEFT froze everything but the adapters
                lm.connector.requires_grad_(True)
    if recipe.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in lm.parameters())
    return Built(model, lm, tokenizer, tower.processor, config, folder,
                 {"trainable": trainable, "total": total, "num_image_tokens": int(tower.num_patches)})


def _saved_config(config: Any, folder: str) -> dict[str, Any]:
    """config.json for an output folder: a relative local tower path becomes absolute (outputs move)."""
    from libra_cli.checkpoint.tower import resolve_vision_tower_path

    d = config.to_dict()
    tower = d.get("mm_vision_tower")
    if isinstance(tower, str) and tower.startswith("."):
        try:
            d["mm_vision_tower"] = resolve_vision_tower_path(tower, folder)
        except Exception:  # noqa: BLE001 - leave it as given
            pass
    d["use_cache"] = False
    return d


# ---------------------------------------------------------------------- trainer
def _trainer_cls() -> type:
    """transformers' Trainer with the original checkpoint layouts, a connector learning rate and validation.

    Long: the subclass is defined inside so that transformers is imported only when training; its
    methods are the body of this function.
    """
    from transformers import Trainer

    class LibraTrainer(Trainer):
        """Trainer with the original checkpoint layouts, a connector learning rate and generation-scored validation."""

        def __init__(self, *a: Any, recipe: Recipe, stage: str, built: Built, eval_records: list | None = None,
                     **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.recipe, self.stage, self.built = recipe, stage, built
            self.eval_records = eval_records or []
            self._tokens = 0
            self._t0 = None
            self._meteor = None

        # ---- data
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if self.recipe.group_by_length and hasattr(ds, "lengths"):
                from transformers.trainer_pt_utils import LengthGroupedSampler

                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            dataset=ds, lengths=ds.lengths)
            return super()._get_train_sampler(train_dataset)

        # ---- optimiser: the connector may have its own learning rate
        def create_optimizer(self, model: Any = None) -> Any:
            lr = self.recipe.mm_projector_lr
            if self.optimizer is not None or lr is None or self.stage == "align":
                return super().create_optimizer(model) if model is not None else super().create_optimizer()
            opt_model = self.model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: list[dict[str, Any]] = []
            for is_conn in (False, True):
                for wd in (True, False):
                    params = [p for n, p in opt_model.named_parameters() if p.requires_grad
                              and (("mm_projector" in n) == is_conn) and ((n in decay) == wd)]
                    if params:
                        g: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if wd else 0.0}
                        if is_conn:
                            g["lr"] = lr
                        groups.append(g)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = cls(groups, **kwargs)
            return self.optimizer

        # ---- throughput
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            if self._t0 is None:
                self._t0 = time.perf_counter()
            self._tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs: dict[str, float], *a: Any, **kw: Any) -> None:
            if "loss" in logs and self._t0 is not None:
                dt = max(time.perf_counter() - self._t0, 1e-9)
                logs["tokens_per_s"] = round(self._tokens / dt, 1)
                self._tokens, self._t0 = 0, time.perf_counter()
            super().log(logs, *a, **kw)

        # ---- saving in the original layouts
        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            out = Path(output_dir or self.args.output_dir)
            if not self.args.should_save:
                return
            out.mkdir(parents=True, exist_ok=True)
            lm = self.built.base
            cfg = _saved_config(self.built.config, self.built.folder)
            if self.stage == "align":
                layout.save_projector(lm.connector, out, state_dict)
            else:
                from peft import PeftModel

                model = self.model
                if isinstance(model, PeftModel):
                    model.save_pretrained(str(out), state_dict=state_dict)
                    layout.save_non_lora_trainables(lm, out, state_dict)
                else:  # full fine-tune without LoRA: a plain full checkpoint
                    kw = {} if state_dict is None else {"state_dict": layout.without_tower(state_dict)}
                    lm.save_pretrained(str(out), **kw)
            layout.write_config(out, cfg, dtype=self.recipe.dtype)
            # the base's own tokenizer files (tokenizer.model included): the output then tokenises and decodes
            # exactly like its base with the original-exact codec, and the original code can load it
            if not layout.copy_tokenizer_files(self.built.folder, out) and self.processing_class is not None:
                self.processing_class.save_pretrained(str(out))
            save_recipe(self.recipe, out, self.stage)

        # ---- checkpoints appear only when complete: written under a hidden name, then renamed
        def _get_output_dir(self, trial: Any) -> str:
            staging = getattr(self, "_staging", None)
            return str(staging) if staging is not None else super()._get_output_dir(trial)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            run_dir = Path(super()._get_output_dir(trial))
            step = self.state.global_step
            self._staging = run_dir / f"{STAGING_PREFIX}{step}"
            try:
                super()._save_checkpoint(model, trial)
            finally:
                staging, self._staging = self._staging, None
            self.accelerator.wait_for_everyone()  # every rank's shards are written before the rename
            if self.args.should_save:
                publish_checkpoint(staging, run_dir, step, self.state)
                from transformers.trainer_utils import rotate_checkpoints

                rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            self.accelerator.wait_for_everyone()

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            from libra_cli.checkpoint.load import load_projector

            ckpt = Path(resume_from_checkpoint)
            if self.stage == "align":
                load_projector(self.built.base, layout.load_bin(layout.projector_source(ckpt)))
                return
            from peft import PeftModel, set_peft_model_state_dict

            if isinstance(self.model, PeftModel):
                from safetensors.torch import load_file

                f = ckpt / "adapter_model.safetensors"
                state = load_file(str(f)) if f.is_file() else layout.load_bin(ckpt / "adapter_model.bin")
                set_peft_model_state_dict(self.model, state)
                nlt = layout.non_lora_file(ckpt)
                if nlt.is_file():
                    self.model.load_state_dict(layout.load_bin(nlt), strict=False)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

        # ---- validation: eval loss + real generation scored with libra_cli.metrics
        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            if self.recipe.eval_generate and self.eval_records:
                gen = generation_scores(self, self.eval_records[: self.recipe.eval_subset])
                gen = {f"{metric_key_prefix}_{k}": v for k, v in gen.items()}
                metrics.update(gen)
                self.log(gen)
            return metrics

    return LibraTrainer


def validation_model(built: Built, recipe: Recipe) -> Any:
    """The model being trained as a :class:`LoadedModel` (with the original-exact codec of its base)."""
    from libra_cli.checkpoint.load import LoadedModel

    return LoadedModel.from_model(built.base, built.tokenizer, built.folder, recipe.conv_mode,
                                  image_processor=built.processor, name="training", folder=recipe.output_dir)


def validation_reports(built: Built, recipe: Recipe, records: list[dict]) -> tuple[list[str], list[str]]:
    """(generated texts, reference answers) for validation records, with the model being trained.

    The model is wrapped with :meth:`LoadedModel.from_model`, so it tokenises and decodes with the
    same original-exact codec as ``libra infer``: the texts are what the checkpoint will print.
    """
    from libra_cli.generation import GenerationSettings, Sample, generate

    lm = built.base
    was_training = lm.training
    lm.eval()
    old_cache = lm.generation_config.use_cache
    lm.generation_config.use_cache = True
    loaded = validation_model(built, recipe)
    folder = Path(recipe.image_folder)
    settings = GenerationSettings(max_new_tokens=recipe.eval_max_new_tokens, num_beams=recipe.eval_num_beams)
    preds, refs = [], []
    try:
        bs = max(recipe.per_device_eval_batch_size, 1)
        for i in range(0, len(records), bs):
            samples = []
            for rec in records[i: i + bs]:
                imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
                q = rec["conversations"][0]["value"].replace("<image>", "").strip()
                prior = str(folder / imgs[1]) if len(imgs) > 1 and imgs[1] else None
                samples.append(Sample(current=str(folder / imgs[0]), prior=prior, query=q, id=str(rec.get("id"))))
                refs.append(rec["conversations"][-1]["value"])
            preds.extend(rep.text for rep in generate(loaded, samples, settings))
    finally:
        lm.generation_config.use_cache = old_cache
        lm.train(was_training)
    return preds, refs


def generation_scores(trainer: Any, records: list[dict]) -> dict[str, float]:
    """Generate for ``records`` with the model being trained and score against the last answers."""
    from libra_cli.metrics import evaluate_reports

    preds, refs = validation_reports(trainer.built, trainer.recipe, records)
    res = evaluate_reports(refs, preds, metrics=trainer.recipe.eval_metrics, meteor=trainer._meteor)
    return {k: float(v) for k, v in res["scores"].items()}


# ---------------------------------------------------------------------- callbacks
def _callbacks(recipe: Recipe) -> list[Any]:
    from transformers import TrainerCallback

    class KeepBest(TrainerCallback):
        """Copy the best checkpoint (by ``metric_for_best_model``) to ``output_dir/best``."""

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not args.should_save or not state.best_global_step or state.best_global_step != state.global_step:
                return
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if src.is_dir():
                from libra_cli.atomic import atomic_output

                with atomic_output(Path(args.output_dir) / "best", is_dir=False) as tmp:
                    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*"))

    return [KeepBest(), _progress_callback(recipe)]


def _progress_callback(recipe: Recipe) -> Any:
    """Progress on stderr (stdout is for the output path): a rich bar on a terminal, else one line per log."""
    import sys

    from transformers import TrainerCallback

    from libra_cli.console import err_console, progress_bar

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.console = err_console()
            self.bar: Any = None
            self.task: Any = None
            self.last = ""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero and sys.stderr.isatty() and not recipe.disable_tqdm:
                self.bar = progress_bar(self.console, "training", unit="steps")
                self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, rate="")
                self.bar.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step, rate=self.last)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            shown = {k: v for k, v in logs.items() if k in ("loss", "eval_loss", "learning_rate", "tokens_per_s")
                     or k.startswith("eval_")}
            line = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            if "loss" in logs:
                self.last = f"loss {logs['loss']:.4f}" + (f", {logs['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in logs else "")
            if self.bar is None or any(k.startswith("eval_") for k in logs):
                self.console.print(f"[dim]step {state.global_step}/{state.max_steps}:[/] {line}", highlight=False)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return Progress()


# ---------------------------------------------------------------------- entry point
@dataclass
class TrainResult:
    output_dir: str
    global_step: int
    losses: list[float]
    eval: list[dict[str, float]]
    truncated: int
    trainable: int
    total: int
    seconds: float
    tokens_per_s: float | None
    peak_rss_mb: float | None = None


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _recipe_mixed_precision(recipe: Recipe) -> None:
    """The recipe decides mixed precision: a launcher's ``ACCELERATE_MIXED_PRECISION`` (e.g. ``mixed_precision: bf16``
    in a preset) would otherwise silently autocast a float32 recipe, since the Trainer's Accelerator reads it."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if recipe.bf16 else "fp16" if recipe.fp16 else "no"


def prepare_data(recipe: Recipe) -> tuple[list[dict], list[dict] | None]:
    """Read and check the training (and validation) JSON: errors come before any model is loaded."""
    from libra_cli.training.data import read_records

    train = read_records(recipe.data_path, recipe.image_folder)
    ev = read_records(recipe.eval_data_path, recipe.image_folder) if recipe.eval_data_path else None
    if recipe.pretrain_mm_mlp_adapter:
        layout.projector_source(recipe.pretrain_mm_mlp_adapter)
    return train, ev


def check_output_dir(output_dir: str | Path, resume: bool, force: bool) -> None:
    """Refuse to train over an earlier run unless resuming it or asked to replace it (``--force``)."""
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"output folder {out} is a file; give a folder path with --out")
    contents = [p for p in out.iterdir() if p.name not in (".DS_Store",)]
    if not contents or resume:
        return
    if not force:
        raise InputError(f"output folder {out} holds an earlier run ({len(contents)} entries); pass --resume to "
                         "continue it, --force to start again there, or choose another --out")
    for p in contents:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


STAGING_PREFIX = ".staging-checkpoint-"
COMPLETE_MARK = "trainer_state.json"  # the Trainer writes it last


def publish_checkpoint(staging: Path, run_dir: Path, step: int, state: Any) -> Path:
    """Rename a fully written ``.staging-checkpoint-N/checkpoint-N`` to ``checkpoint-N`` (replacing a re-save)."""
    written = staging / f"checkpoint-{step}"
    final = run_dir / f"checkpoint-{step}"
    # the Trainer looked for the best checkpoint under the staging name: point it at the published one
    best = run_dir / f"checkpoint-{state.best_global_step}" if getattr(state, "best_global_step", None) else None
    state.best_model_checkpoint = str(best) if best is not None and (best.is_dir() or best == final) else None
    state_file = written / COMPLETE_MARK
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        saved["best_model_checkpoint"] = state.best_model_checkpoint
        state_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(written, final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders that were written completely, oldest first (staging folders never count)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
             and (p / COMPLETE_MARK).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(resume: str | bool | None, output_dir: str) -> str | None:
    """``--resume``: ``True``/``"latest"`` -> the newest complete checkpoint in ``output_dir``; a path -> that path.

    A run killed while writing a checkpoint leaves a hidden staging folder (removed here) and never a
    half-written ``checkpoint-N``; older layouts' incomplete folders (no trainer state) are skipped.
    """
    if not resume:
        return None
    for stale in Path(output_dir).glob(f"{STAGING_PREFIX}*") if Path(output_dir).is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
    if resume is True or resume == "latest":
        done = complete_checkpoints(output_dir)
        if not done:
            raise InputError(f"--resume: no complete checkpoint-N folder in {output_dir}; drop --resume to start fresh")
        return str(done[-1])
    if not Path(str(resume)).is_dir():
        raise InputError(f"--resume {resume}: not a checkpoint folder")
    return str(resume)


def _training_args(recipe: Recipe, evaluating: bool, best: str | None, higher: bool, report_to: list[str]) -> Any:
    """transformers' ``TrainingArguments`` from the recipe (the Trainer owns DDP / DeepSpeed / FSDP)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=recipe.output_dir,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation(_world_size()),
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_ratio,
        lr_scheduler_type=recipe.lr_scheduler_type,
        max_grad_norm=recipe.max_grad_norm,
        bf16=recipe.bf16,
        fp16=recipe.fp16,
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=recipe.eval_steps if evaluating else None,
        metric_for_best_model=best,
        greater_is_better=higher if best else None,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=recipe.dataloader_num_workers,
        disable_tqdm=True,  # progress and logs go to stderr through libra's own callback
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,  # enabled on the model itself (works with frozen inputs)
        ddp_find_unused_parameters=False,
    )


def train(recipe: Recipe, stage: str, resume: str | bool | None = None, callbacks: list | None = None) -> TrainResult:
    """Run one stage: data checked first, then the model, then transformers' Trainer."""
    from libra_cli.training.data import LibraCollator, LibraTrainDataset

    train_records, eval_records = prepare_data(recipe)
    ckpt = resolve_resume(resume, recipe.output_dir)
    built = build_model(recipe, stage)
    mm_se = bool(getattr(built.config, "mm_use_im_start_end", False))
    pad = getattr(built.config, "image_aspect_ratio", "pad") == "pad"

    def ds(recs: list[dict]) -> LibraTrainDataset:
        return LibraTrainDataset(recs, recipe.image_folder, built.tokenizer, built.processor, recipe.conv_mode,
                                 built.info["num_image_tokens"], recipe.model_max_length, pad, mm_se)

    train_ds = ds(train_records)
    eval_ds = ds(eval_records) if eval_records else None
    evaluating = eval_ds is not None and recipe.eval_steps is not None
    best = recipe.metric_for_best_model if evaluating else None
    if best and not recipe.eval_generate:
        best = "loss"
    higher = best is not None and best.lower() not in ("loss", "eval_loss")
    report_to = [] if recipe.report_to == "none" else [recipe.report_to]
    _recipe_mixed_precision(recipe)
    args = _training_args(recipe, evaluating, best, higher, report_to)
    collator = LibraCollator(built.tokenizer.pad_token_id, built.info["num_image_tokens"], recipe.padding_side)
    trainer = _trainer_cls()(
        model=built.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=built.tokenizer, callbacks=[*_callbacks(recipe), *(callbacks or [])],
        recipe=recipe, stage=stage, built=built, eval_records=eval_records,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # prints the log dicts on stdout
    trainer.remove_callback(ProgressCallback)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.perf_counter() - t0
    trainer.save_model(recipe.output_dir)
    trainer.save_state()
    hist = trainer.state.log_history
    losses = [h["loss"] for h in hist if "loss" in h]
    tps = [h["tokens_per_s"] for h in hist if "tokens_per_s" in h]
    evals = [h for h in hist if any(k.startswith("eval_") for k in h)]
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if train_ds.truncated:
        from libra_cli.console import warn_once

        warn_once("truncated", f"{len(train_ds.truncated)} training samples were longer than model_max_length "
                               f"{recipe.model_max_length} and were truncated")
    return TrainResult(recipe.output_dir, trainer.state.global_step, losses, evals, len(train_ds.truncated),
                       built.info["trainable"], built.info["total"], seconds,
                       (sum(tps) / len(tps)) if tps else None, rss)
