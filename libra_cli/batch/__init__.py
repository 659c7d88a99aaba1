"""``libra batch``: fast, resumable, batch-invariant report generation over a whole dataset.

- :mod:`~libra_cli.batch.inputs`: questions JSONL / CSV / dataset -> items and error records;
- :mod:`~libra_cli.batch.plan`: shards, length buckets (``--batch-size auto``: ``checkpoint.runtime``);
- :mod:`~libra_cli.batch.images`: background decoding and the per-image encoder-output cache;
- :mod:`~libra_cli.batch.output`: the crash-safe answers file and shard merging;
- :mod:`~libra_cli.batch.runner`: the run itself on any engine (:class:`BatchRunner`, :func:`run_batch`).

Names are re-exported lazily (``from libra_cli import batch as b; b.BatchRunner``).
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

_MODULES = {
    "inputs": ["ImageRef", "Item", "ErrorRecord", "Columns", "qid_key", "read_questions", "read_csv", "open_dataset",
               "read_dataset", "read_input"],
    "plan": ["shard_items", "shard_path", "errors_path", "plan_batches", "shard_from_env", "launched_by_torchrun", "resolve_shard",
             "parse_batch_size", "apply_limit", "shard_device"],
    "images": ["decode_image", "ImagePrefetcher", "EncoderCache"],
    "output": ["answer_id", "read_lines", "AnswerWriter", "ordered_answers", "merge_shards"],
    "runner": ["EXIT_SAMPLES_FAILED", "RunStats", "model_id_for", "BatchRunner", "run_batch"],
}
_LAZY = {name: f"libra_cli.batch.{mod}" for mod, names in _MODULES.items() for name in names}
_LAZY["InputError"] = "libra_cli.errors"
_LAZY.update(dict.fromkeys(("per_sample_bytes", "pick_batch_size", "auto_batch_size"), "libra_cli.checkpoint.memory"))
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
