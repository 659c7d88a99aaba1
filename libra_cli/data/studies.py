"""Study-level input: from a study's images (frontal and lateral) and its earlier studies' images, pick the
frontal current image and the latest earlier frontal prior, by the rules of ``libra data pair-priors``.

The prior is what ``pair-priors --same-view-class`` gives the chosen image: the last image (by study
time; missing times last, input order kept) of the latest strictly earlier study date in the frontal
view class. The current is the study's frontal image, PA before AP before the other frontal views,
the latest by time among equals. Every choice is explained in :class:`Selection` so outputs record it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from libra_cli.data.pairing import view_class
from libra_cli.errors import InputError

VIEW_PREFERENCE = ("PA", "AP", "AP AXIAL", "PA LLD", "PA RLD", "AP LLD", "AP RLD")
RULE = "current: frontal (PA > AP > other frontal, latest time); prior: latest earlier frontal (pair-priors rules)"


@dataclass
class StudyImage:
    """One image of a study: where it is, its ``ViewPosition``, and its study date/time when known."""

    path: Any
    view: str = ""
    date: int | None = None  # YYYYMMDD
    time: float | None = None  # HHMMSS(.fff)

    @classmethod
    def parse(cls, value: Any, where: str) -> StudyImage:
        """``"a.jpg"`` or ``{"path": "a.jpg", "view": "PA", "date": "2180-01-02", "time": "101500"}``."""
        if isinstance(value, str):
            return cls(value)
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            raise InputError(f"{where}: each study image must be a path or an object with a 'path'")
        return cls(value["path"], str(value.get("view") or value.get("ViewPosition") or ""),
                   parse_date(value.get("date", value.get("StudyDate")), where),
                   _time(value.get("time", value.get("StudyTime")), where))

    @property
    def frontal(self) -> bool:
        return view_class(self.view) == "frontal"


@dataclass
class Selection:
    """Which image became the current and which the prior, and why (recorded in outputs)."""

    current: StudyImage
    prior: StudyImage | None
    candidates: int
    earlier: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"current": str(self.current.path), "current_view": self.current.view or None,
                             "prior": str(self.prior.path) if self.prior else None,
                             "prior_view": (self.prior.view or None) if self.prior else None,
                             "prior_date": self.prior.date if self.prior else None,
                             "study_images": self.candidates, "earlier_images": self.earlier, "rule": RULE}
        if self.note:
            d["note"] = self.note
        return d


def parse_date(value: Any, where: str) -> int | None:
    if value in (None, ""):
        return None
    digits = re.sub(r"[^0-9]", "", str(value))
    if len(digits) != 8:
        raise InputError(f"{where}: date {value!r} is not YYYYMMDD or YYYY-MM-DD")
    return int(digits)


def _time(value: Any, where: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(str(value).replace(":", ""))
    except ValueError as exc:
        raise InputError(f"{where}: time {value!r} is not HHMMSS") from exc


def current_key(ix: tuple[int, StudyImage]) -> tuple[int, float, int]:
    i, im = ix
    v = im.view.strip().upper()
    rank = VIEW_PREFERENCE.index(v) if v in VIEW_PREFERENCE else len(VIEW_PREFERENCE)
    return rank, -(im.time if im.time is not None else float("-inf")), i


def select(study: list[StudyImage], earlier: list[StudyImage], study_date: int | None = None) -> Selection:
    """The frontal current of ``study`` and the latest earlier frontal prior among ``earlier``."""
    if not study:
        raise InputError("a study needs at least one image")
    frontal = [(i, im) for i, im in enumerate(study) if im.frontal]
    note = ""
    if frontal:
        current = min(frontal, key=current_key)[1]
    else:
        current = study[0]
        note = "no frontal image in the study: the first image is the current"
    date = current.date or study_date or next((im.date for im in study if im.date), None)
    eligible = [(i, im) for i, im in enumerate(earlier)
                if im.frontal and (date is None or im.date is None or im.date < date)]
    dated = [(i, im) for i, im in eligible if im.date is not None]
    prior = None
    if dated:  # pair-priors: the latest earlier date; within it the last by time (missing times last), then input order
        latest = max(im.date for _, im in dated)
        same_day = [(i, im) for i, im in dated if im.date == latest]
        prior = max(same_day, key=lambda t: (t[1].time is None, t[1].time or 0.0, t[0]))[1]
    elif eligible:  # no dates: the earlier studies as listed, the last one is the latest
        prior = eligible[-1][1]
    if prior is None:
        note = (note + "; " if note else "") + "no earlier frontal image: the current is reused as the prior"
    return Selection(current, prior, len(study), len(earlier), note)
