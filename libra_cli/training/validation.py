"""Validation during training: real generation with the model being trained, decoded like ``libra infer``,
scored with ``libra_cli.metrics``; and the callbacks that keep the best checkpoint and show progress."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from libra_cli.atomic import atomic_output
from libra_cli.checkpoint.load import LoadedModel
from libra_cli.console import err_console, progress_bar
from libra_cli.engines.registry import for_model
from libra_cli.metrics.api import evaluate_reports
from libra_cli.requests import GenerationSettings, Sample
from libra_cli.training.model import Built
from libra_cli.training.recipe import Recipe


def validation_model(built: Built, recipe: Recipe) -> LoadedModel:
    """The model being trained as a :class:`LoadedModel` (with the original-exact codec of its base)."""
    return LoadedModel.from_model(built.base, built.tokenizer, built.folder, recipe.conv_mode,
                                  image_processor=built.processor, name="training", folder=recipe.output_dir)


def validation_reports(built: Built, recipe: Recipe, records: list[dict]) -> tuple[list[str], list[str]]:
    """(generated texts, reference answers) for validation records, with the model being trained.

    The model is wrapped with :meth:`LoadedModel.from_model`, so it tokenises and decodes with the
    same original-exact codec as ``libra infer``: the texts are what the checkpoint will print.
    """
    lm = built.base
    was_training = lm.training
    lm.eval()
    old_cache = lm.generation_config.use_cache
    lm.generation_config.use_cache = True
    settings = GenerationSettings(max_new_tokens=recipe.eval_max_new_tokens, num_beams=recipe.eval_num_beams)
    engine = for_model(validation_model(built, recipe), settings)
    folder = Path(recipe.image_folder)
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
            preds.extend(rep.text for rep in engine.generate(samples, settings))
    finally:
        lm.generation_config.use_cache = old_cache
        lm.train(was_training)
    return preds, refs


def generation_scores(trainer: Any, records: list[dict]) -> dict[str, float]:
    """Generate for ``records`` with the model being trained and score against the last answers."""
    preds, refs = validation_reports(trainer.built, trainer.recipe, records)
    # scorer models (RadGraph, RaTEScore, ...) load once and stay loaded across validations
    res = evaluate_reports(refs, preds, metrics=trainer.recipe.eval_metrics, meteor=trainer._meteor, strict=True,
                           scorers=getattr(trainer, "_scorers", None))
    return {k: float(v) for k, v in res["scores"].items()}


class KeepBest(TrainerCallback):
    """Copy the best checkpoint (by ``metric_for_best_model``) to ``output_dir/best``."""

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not args.should_save or not state.best_global_step or state.best_global_step != state.global_step:
            return
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if src.is_dir():
            with atomic_output(Path(args.output_dir) / "best", is_dir=False) as tmp:
                shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*"))


class Progress(TrainerCallback):
    """Progress on stderr (stdout is for the output path): a rich bar on a terminal, else one line per log;
    nothing with ``quiet``."""

    def __init__(self, recipe: Recipe, quiet: bool = False) -> None:
        self.recipe = recipe
        self.quiet = quiet
        self.console = err_console()
        self.bar: Any = None
        self.task: Any = None
        self.last = ""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero and sys.stderr.isatty() and not self.recipe.disable_tqdm:
            self.bar = progress_bar(self.console, "training", unit="steps")
            self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, rate="")
            self.bar.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, rate=self.last)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs or self.quiet:
            return
        shown = {k: v for k, v in logs.items() if k in ("loss", "eval_loss", "learning_rate", "tokens_per_s")
                 or k.startswith("eval_")}
        line = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        if not line:  # the end-of-training summary (runtime, samples/s): `train` prints its own
            return
        if "loss" in logs:
            self.last = f"loss {logs['loss']:.4f}" + (f", {logs['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in logs else "")
        if self.bar is None or any(k.startswith("eval_") for k in logs):
            self.console.print(f"[dim]step {state.global_step}/{state.max_steps}:[/] {line}", highlight=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def callbacks(recipe: Recipe, quiet: bool = False) -> list[TrainerCallback]:
    return [KeepBest(), Progress(recipe, quiet)]
