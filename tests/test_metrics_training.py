"""Training validation can select the best checkpoint on any libra eval metric; mistakes surface
before training (recipe validation, scorer models checked when the trainer is built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libra_cli.errors import InputError
from libra_cli.training.recipe import Recipe


def _recipe(**kw: object) -> Recipe:
    return Recipe(model_name_or_path="m", data_path="d.json", output_dir="o", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("metrics", "best"), [("bleu,rouge,temporal", "BLEU4"), ("radgraph", "RG_ER"),
                                               ("ratescore,bleu", "RaTEScore"), ("radcliq", "RadCliQ-v1"),
                                               ("chexbert", "CheXbert_F1_14_macro"), ("radgraph", "loss")])
def test_any_metric_can_select_the_best_checkpoint(metrics: str, best: str) -> None:
    _recipe(eval_metrics=metrics, metric_for_best_model=best).validate("finetune")


@pytest.mark.parametrize(("metrics", "best", "needle"), [("bleu,rouge", "RG_ER", "not among"),
                                                         ("rouge,radgrph", "ROUGE-L", "unknown metric")])
def test_recipe_metric_mistakes_are_one_line(metrics: str, best: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        _recipe(eval_metrics=metrics, metric_for_best_model=best).validate("finetune")


def test_missing_scorer_model_is_found_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_cli.metrics.api import check_selection

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LIBRA_CACHE", str(tmp_path / "libra"))
    assert check_selection("bleu,rouge", "BLEU4") is not None  # lexical: nothing to load
    with pytest.raises(InputError, match=r"libra eval download|pip install"):
        check_selection("radgraph", "RG_ER")
