"""A deterministic corpus of MIMIC-like findings pairs, for tests and benchmarks.

Real MIMIC-CXR text cannot ship; this imitates its noise: ``___`` de-identification blanks,
newlines, hyphens and dashes, numbered lists, unicode, upper case, temporal wording, empty and
unrelated predictions. Nothing here is used by the metrics themselves.
"""

from __future__ import annotations

import random

_SENTENCES = [
    "The heart size is normal.",
    "Heart size is mildly enlarged, unchanged from ___.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Mediastinal and hilar contours are stable.",
    "There is no pleural effusion or pneumothorax.",
    "Small left pleural effusion has increased since the prior study.",
    "Right-sided pleural effusion is smaller than on ___.",
    "No focal consolidation is seen.",
    "Patchy opacity at the left lung base may reflect atelectasis; infection not excluded.",
    "Bibasilar atelectasis is improved.",
    "Pulmonary vascular congestion has worsened, with new mild interstitial edema.",
    "Endotracheal tube terminates 4.5 cm above the carina.",
    "Right internal jugular central venous catheter ends in the mid SVC.",
    "Nasogastric tube courses below the diaphragm, tip not seen.",
    "Sternotomy wires are intact.",
    "Degenerative changes of the thoracic spine are noted.",
    "There is persistent elevation of the right hemidiaphragm.",
    "The lungs are clear.",
    "Lung volumes are low, causing crowding of the bronchovascular markings.",
    "A 1.2-cm nodule in the right upper lobe is stable since ___ (___, __, __).",
    "Moderate cardiomegaly is again seen.",
    "Interval removal of the left chest tube; no pneumothorax.",
    "Resolution of the previously seen right lower lobe consolidation.",
    "Calcified granuloma in the left mid-lung zone is unchanged.",
    "Mild pulmonary edema is progressing compared to the radiograph from ___.",
    "No acute osseous abnormality.",
    "Surgical clips in the right upper quadrant.",
    "Aortic knob calcification – stable.",
    "Opacities in both lower lobes, greater on the right, are new.",
    "Pacemaker leads terminate in the right atrium and right ventricle…",
]

_SYNONYMS = {
    "normal": "within normal limits",
    "enlarged": "increased",
    "unchanged": "stable",
    "stable": "unchanged",
    "smaller": "decreased",
    "improved": "better",
    "worsened": "worse",
    "new": "newly seen",
    "effusion": "effusions",
    "opacity": "opacities",
    "atelectasis": "collapse",
    "lungs": "lung fields",
    "clear": "without consolidation",
    "mild": "minimal",
}

_UNICODE = ["naïve", "µm", "°", "≥", "é", "—", "“quoted”", "½", "Ø", "\u00a0"]


def _noisy(sentence: str, rng: random.Random) -> str:
    """Swap synonyms, case and punctuation the way another writer (or a model) would."""
    words = sentence.split(" ")
    out = []
    for w in words:
        key = w.strip(".,;").lower()
        if key in _SYNONYMS and rng.random() < 0.35:
            w = w.lower().replace(key, _SYNONYMS[key])
        if rng.random() < 0.03:
            continue
        out.append(w)
    text = " ".join(out)
    if rng.random() < 0.1:
        text = text.upper()
    if rng.random() < 0.05:
        text += " " + rng.choice(_UNICODE)
    return text


def _report(rng: random.Random, lo: int, hi: int) -> list[str]:
    return rng.sample(_SENTENCES, rng.randint(lo, hi))


def _join(sentences: list[str], rng: random.Random) -> str:
    style = rng.random()
    if style < 0.15:  # numbered list, MIMIC style
        return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    if style < 0.25:
        return " \n\n ".join(sentences)
    if style < 0.3:
        return " - ".join(sentences) + " ---, ---, ---"
    return " ".join(sentences)


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` (reference, prediction) findings pairs with realistic noise; same seed, same corpus."""
    rng = random.Random(seed)
    refs: list[str] = []
    preds: list[str] = []
    for _ in range(n):
        ref_sents = _report(rng, 2, 8)
        refs.append(_join(ref_sents, rng))
        kind = rng.random()
        if kind < 0.03:
            preds.append("")
        elif kind < 0.06:
            preds.append(_join(_report(rng, 1, 5), rng))  # unrelated
        elif kind < 0.08:
            preds.append(" ___ \n")  # blank-only
        else:
            keep = [s for s in ref_sents if rng.random() < 0.8] or ref_sents[:1]
            pred = [_noisy(s, rng) for s in keep]
            if rng.random() < 0.4:
                pred.append(rng.choice(_SENTENCES))
            rng.shuffle(pred) if rng.random() < 0.2 else None
            preds.append(_join(pred, rng))
    return refs, preds


# cases where the field's packages misbehave: empty, whitespace-only, sentence-less, de-id only,
# negations, over-long (> 512 word pieces)
EDGE_CASES: tuple[tuple[str, str], ...] = (
    ("No pleural effusion.", ""),
    ("", "No pleural effusion."),
    ("", ""),
    ("Heart size is normal.", "   \n\t "),
    ("  \n", "The lungs are clear."),
    ("The lungs are clear.", "ok"),
    ("No pneumothorax.", "."),
    ("___", "___"),
    ("Comparison: ___. No acute process.", "Compared to ___, no acute process."),
    ("There is no pleural effusion or pneumothorax.", "There is a pleural effusion and a pneumothorax."),
    ("No focal consolidation is seen.", "Focal consolidation is seen."),
    ("Cardiomegaly is not present.", "Cardiomegaly is present."),
    ("Possible mild pulmonary edema.", "No pulmonary edema."),
    ("Support devices are unchanged.", "Support devices removed."),
)


def scorer_pairs(n: int = 200, seed: int = 0) -> tuple[list[str], list[str]]:
    """At least ``n`` pairs for model-metric equality tests: :data:`EDGE_CASES`, two very long
    reports (well over 512 word pieces), then :func:`make_pairs` to fill up."""
    long_ref = " ".join(_SENTENCES * 2)
    long_pred = " ".join(reversed(_SENTENCES * 2))
    refs = [r for r, _ in EDGE_CASES] + [long_ref, long_ref[:1500]]
    preds = [p for _, p in EDGE_CASES] + [long_pred, "No acute cardiopulmonary process."]
    more_refs, more_preds = make_pairs(max(0, n - len(refs)), seed=seed)
    return refs + more_refs, preds + more_preds
