"""A judge as a ``libra eval`` metric group: per-pair scores, the package's mean, notes on unparsable pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from libra_cli.metrics.judges.run import JudgeOptions, run
from libra_cli.metrics.scoring import GroupOutput


def judge_group(group: str, s: Any, refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str]) -> GroupOutput:
    """GREEN: mean over every pair (an unparsable response scores 0, as the authors' code gives it).
    CRIMSON: mean over the pairs the package could parse and score (the others are listed)."""
    options = s.options.judge or JudgeOptions()
    res = run(group, refs, hyps, options, s.cache, s.options.hub_cache)
    s.judge_runs[group] = res
    metric = "GREEN" if group == "green" else "CRIMSON"
    out = GroupOutput()
    scores = np.array([np.nan if r.score is None else r.score for r in res.results], dtype=np.float64)
    valid = ~np.isnan(scores)
    if valid.any():
        out.values[metric] = float(scores[valid].mean())
    if valid.all():
        out.per_pair[metric] = scores
    # mean over the valid pairs, for bootstrap CIs and the paired test: sums of [score, 1] per resample
    out.corpus[metric] = (np.column_stack([np.where(valid, scores, 0.0), valid.astype(np.float64)]),
                          lambda sums: sums[:, 0] / np.maximum(sums[:, 1], 1e-300))
    st = res.stats
    rate = f", {st['pairs_per_s']:.2f} pairs/s" if st["pairs_per_s"] else ""
    out.notes.append(f"{metric}: judge {res.model}@{res.commit[:10]} on {st['engine']}"
                     f"{' (' + st['dtype'] + ')' if st['dtype'] else ''}: {st['generated']} pair(s) judged in "
                     f"{st['seconds']:.1f} s{rate}, {st['cached']} from the cache")
    failed = [i for i, r in enumerate(res.results) if not r.parsed]
    if failed:
        shown = ", ".join(repr(ids[i]) for i in failed[:5]) + (", ..." if len(failed) > 5 else "")
        what = ("scored 0 (no [Matched Findings] count)" if group == "green"
                else "left out of the mean, as crimson-score's evaluate_reports.py does")
        out.notes.append(f"{metric}: {len(failed)} of {len(res.results)} judge response(s) could not be parsed "
                         f"({shown}); {what}")
    return out
