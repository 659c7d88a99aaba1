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

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import rotate_checkpoints

from libra_cli.checkpoint import layout
from libra_cli.checkpoint.card import CardFacts, write_model_card
from libra_cli.checkpoint.load import load_projector
from libra_cli.console import third_party_logs_to_stderr, warn_once
from libra_cli.metrics.api import check_selection
from libra_cli.metrics.registry import LOWER_IS_BETTER
from libra_cli.training import outputs
from libra_cli.training.data import LibraCollator, LibraTrainDataset, prepare_data
from libra_cli.training.model import Built, build_model, saved_config
from libra_cli.training.outputs import resolve_resume
from libra_cli.training.recipe import Recipe, save_recipe
from libra_cli.training.validation import callbacks as callbacks_for
from libra_cli.training.validation import generation_scores


# ---------------------------------------------------------------------- trainer
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
        self._scorers = None
        if recipe.eval_steps and recipe.eval_generate:  # names and scorer models checked now, not at validation
            self._scorers = check_selection(recipe.eval_metrics, recipe.metric_for_best_model,
                                            radgraph_model=recipe.eval_radgraph_model)

    # ---- data
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.recipe.group_by_length and hasattr(ds, "lengths"):
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
        cfg = saved_config(self.built.config, self.built.folder)
        if self.stage == "align":
            layout.save_projector(lm.connector, out, state_dict)
        else:
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
        self._staging = run_dir / f"{outputs.STAGING_PREFIX}{step}"
        try:
            super()._save_checkpoint(model, trial)
        finally:
            staging, self._staging = self._staging, None
        self.accelerator.wait_for_everyone()  # every rank's shards are written before the rename
        if self.args.should_save:
            outputs.publish_checkpoint(staging, run_dir, step, self.state)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        ckpt = Path(resume_from_checkpoint)
        if self.stage == "align":
            load_projector(self.built.base, layout.load_bin(layout.projector_source(ckpt)))
            return
        if isinstance(self.model, PeftModel):
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


def _training_args(recipe: Recipe, evaluating: bool, best: str | None, higher: bool, report_to: list[str]) -> Any:
    """transformers' ``TrainingArguments`` from the recipe (the Trainer owns DDP / DeepSpeed / FSDP)."""
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


def _write_card(recipe: Recipe, stage: str, built: Built, steps: int, seconds: float, n_train: int,
                evals: list[dict[str, Any]]) -> None:
    """The output folder's model card: base, recipe, data and the last validation metrics."""
    kind = "projector" if stage == "align" else ("lora" if recipe.lora_enable else "full")
    last = evals[-1] if evals else {}
    metrics = {k[len("eval_"):]: float(v) for k, v in last.items()
               if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(("_runtime", "per_second"))}
    write_model_card(recipe.output_dir, CardFacts(
        title=Path(recipe.output_dir).name, kind=kind, base_model=recipe.model_name_or_path,
        how_made=f"`libra train {stage}` ({steps} steps, {seconds / 60:.1f} min).", recipe=recipe.to_dict(),
        data={"training data": f"{recipe.data_path} ({n_train} records)", "images": recipe.image_folder,
              "validation data": recipe.eval_data_path or "none"},
        metrics=metrics))


def train(recipe: Recipe, stage: str, resume: str | bool | None = None, callbacks: list | None = None,
          quiet: bool = False) -> TrainResult:
    """Run one stage: data checked first, then the model, then transformers' Trainer (``quiet``: no progress)."""
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
    higher = best is not None and best.lower() not in ("loss", "eval_loss") and best not in LOWER_IS_BETTER
    report_to = "all" if recipe.report_to.strip() == "all" else recipe.loggers()
    args = _training_args(recipe, evaluating, best, higher, report_to)
    collator = LibraCollator(built.tokenizer.pad_token_id, built.info["num_image_tokens"], recipe.padding_side)
    trainer = LibraTrainer(
        model=built.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=built.tokenizer, callbacks=[*callbacks_for(recipe, quiet), *(callbacks or [])],
        recipe=recipe, stage=stage, built=built, eval_records=eval_records,
    )
    third_party_logs_to_stderr()
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
    if trainer.args.should_save:
        _write_card(recipe, stage, built, trainer.state.global_step, seconds, len(train_records), evals)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if train_ds.truncated:
        warn_once("truncated", f"{len(train_ds.truncated)} training samples were longer than model_max_length "
                               f"{recipe.model_max_length} and were truncated")
    return TrainResult(recipe.output_dir, trainer.state.global_step, losses, evals, len(train_ds.truncated),
                       built.info["trainable"], built.info["total"], seconds,
                       (sum(tps) / len(tps)) if tps else None, rss)
