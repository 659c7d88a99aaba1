"""Judge outputs crafted to exercise GREEN's and CRIMSON's parsers (random tiny judges only emit garbage).

Standalone (the reference venvs import it without libra): ``tests/reference/judges_run.py`` runs each
package's own parser on these, ``tests/test_judges_reference.py`` runs libra's and compares.
GREEN's first five are real GREEN-RadLlama2-7b outputs from the authors' ``tests/test_repro.py``.
"""

from __future__ import annotations

GREEN_REAL = [
    "\nThe candidate report has several discrepancies when compared to the reference report. The candidate report mentions low lung volumes and mild interstitial pulmonary edema, which are not mentioned in the reference report. The reference report mentions increased opacification of the bilateral bases to the mid lung fields, stable cardiomegaly, and small-to-moderate bilateral pleural effusions, none of which are mentioned in the candidate report. The candidate report also mentions a near-complete interval resolution of bilateral pleural effusions, which contradicts the reference report's mention of small-to-moderate bilateral pleural effusions.\n\n[Clinically Significant Errors]:\n(a) False report of a finding in the candidate: 2. Low lung volumes; Mild interstitial pulmonary edema.\n(b) Missing a finding present in the reference: 3. Increased opacification of the bilateral bases to the mid lung fields; Stable cardiomegaly; Small-to-moderate bilateral pleural effusions.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 1. Near-complete interval resolution of bilateral pleural effusions.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Clinically Insignificant Errors]:\n(a) False report of a finding in the candidate: 0.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Matched Findings]:\n0.",
    "\nThe candidate report has several clinically significant errors. It falsely reports a large right hilar lung mass and radiation fibrosis, which are not mentioned in the reference report. It also misidentifies the location of the pneumonia, stating it is in the right upper and lower lobes, while the reference report mentions it in the left lower lobe. The candidate report also misses the finding of new focal airspace opacities in the right lung apex and right lung base. The candidate report also misidentifies the location of the left retrocardiac opacity, which is not mentioned in the reference report. \n\n[Clinically Significant Errors]:\n(a) False report of a finding in the candidate: 2. Large right hilar lung mass; Radiation fibrosis.\n(b) Missing a finding present in the reference: 1. New focal airspace opacities in the right lung apex and right lung base.\n(c) Misidentification of a finding's anatomic location/position: 2. Pneumonia in the right upper and lower lobes; Left retrocardiac opacity.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Clinically Insignificant Errors]:\n(a) False report of a finding in the candidate: 0.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Matched Findings]:\n1. Small left effusion.",
    "\nThe candidate report has several discrepancies when compared to the reference report. The candidate report incorrectly identifies the location of the opacification, stating it is at the right base instead of the left. It also fails to mention the worsened lung volumes and the substantial volume loss in the lower lobes and pleural effusion. Furthermore, the candidate report incorrectly states that the opacification is unchanged, which contradicts the reference report's finding of worsened lung volumes.\n\n[Clinically Significant Errors]:\n(a) False report of a finding in the candidate: 0.\n(b) Missing a finding present in the reference: 2. Worsened lung volumes; Substantial volume loss in the lower lobes and pleural effusion.\n(c) Misidentification of a finding's anatomic location/position: 1. Opacification at the right base instead of the left.\n(d) Misassessment of the severity of a finding: 1. Incorrectly stated that the opacification is unchanged.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Clinically Insignificant Errors]:\n(a) False report of a finding in the candidate: 0.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Matched Findings]:\n2. The monitoring and support devices are unchanged; The left lung remains clear.",
    "\nThe candidate report mentions a 10cm opacity in the right lower lobe, which is not mentioned in the reference report. This is a clinically significant error as it falsely reports a finding that is not present in the reference report. The candidate report correctly mentions that there is no evidence of new acute pneumonia, which matches the reference report's finding of no evidence of new acute infiltrates.\n\n[Clinically Significant Errors]:\n(a) False report of a finding in the candidate: 1. 10cm opacity in the right lower lobe.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Clinically Insignificant Errors]:\n(a) False report of a finding in the candidate: 0.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Matched Findings]:\n1. No evidence of new acute pneumonia.",
    "\nThe candidate report has several significant discrepancies when compared to the reference report. The candidate report incorrectly identifies the location of the lung abnormality, stating it is in the lingula instead of the right upper lobe. It also incorrectly describes the abnormality as a 3-cm mass, whereas the reference report describes it as a nodular opacity. The candidate report also incorrectly attributes the growth of the abnormality to round atelectasis, whereas the reference report attributes it to the overlap of the right scapula. \n\n[Clinically Significant Errors]:\n(a) False report of a finding in the candidate: 1. The candidate report falsely attributes the growth of the lung abnormality to round atelectasis.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 1. The candidate report incorrectly identifies the location of the lung abnormality as the lingula instead of the right upper lobe.\n(d) Misassessment of the severity of a finding: 1. The candidate report incorrectly describes the lung abnormality as a 3-cm mass, whereas the reference report describes it as a nodular opacity.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Clinically Insignificant Errors]:\n(a) False report of a finding in the candidate: 0.\n(b) Missing a finding present in the reference: 0.\n(c) Misidentification of a finding's anatomic location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Matched Findings]:\n1. Both reports recommend further evaluation with a chest CT to better characterize the lung abnormality and exclude the possibility of a slowly growing lung adenocarcinoma."
]

_SIG = "[Clinically Significant Errors]:\n"
_INS = "[Clinically Insignificant Errors]:\n"
_ALL0 = "".join(f"({c}) x: 0.\n" for c in "abcdef")

GREEN_CRAFTED = [
    *GREEN_REAL,
    # matched findings counted on a later line: the authors' regex (no re.MULTILINE) finds none, RadEval's finds 3
    "[Explanation]:\nok\n\n" + _SIG + _ALL0 + "\n" + _INS + _ALL0 + "\n[Matched Findings]:\nThe matches:\n3. a; b; c.",
    # numbered sub-categories instead of letters
    _SIG + "(1) False report: 2. a; b.\n(2) Missing: 1. c.\n(3) Loc: 0.\n(4) Sev: 0.\n(5) Cmp: 0.\n(6) Omit: 1. d.\n\n"
    "[Matched Findings]:\n4. w; x; y; z.",
    # "No ..." bodies, no insignificant section
    _SIG + "No clinically significant errors.\n\n[Matched Findings]:\n2. a; b.",
    _SIG + "(a) False report of a finding in the candidate: 1. a.\n\n[Matched Findings]:\nNo matched findings.",
    # counts without a period, repeated letters, unsorted order
    _SIG + "(c) Loc: 2 a; b\n(a) False: 1. x.\n(a) False again: 5. y.\n(f) Omit: 3. z.\n\n[Matched Findings]:\n1. q.",
    # nothing parsable at all, empty output, whitespace
    "garbage output without any section",
    "",
    "   \n\n  ",
    # sections without blank lines between them (the section regex then runs to the end)
    _SIG + "(a) False: 1. a.\n[Matched Findings]:\n2. b; c.",
    # text as the decoder leaves it before clean_responses: the whole prompt, assistant tag, explanation
    "<|user|>\nObjective ...\n    [Explanation]:\n    <Explanation>\n\n<|assistant|>\n[Explanation]:\nThe candidate ...\n\n"
    + _SIG + "(b) Missing: 2. a; b.\n\n[Matched Findings]:\n1. c.</s>",
    "<|user|>\nprompt</s>\n<|assistant|>\n</s>\n<|assistant|>\nno explanation tag here <unk> [Matched Findings]:\n1. x.",
    "[Explanation]:\none\n[Explanation]:\ntwo\n\n[Matched Findings]:\n7. a.",
]

_VALID = {
    "reference_findings": [
        {"id": "R1", "finding": "small left pleural effusion", "clinical_significance": "actionable_not_urgent"},
        {"id": "R2", "finding": "pneumothorax", "clinical_significance": "urgent"},
        {"id": "R3", "finding": "aortic calcification", "clinical_significance": "benign_expected"},
    ],
    "predicted_findings": [
        {"id": "P1", "finding": "large left pleural effusion", "clinical_significance": "actionable_not_urgent"},
        {"id": "P2", "finding": "right lower lobe opacity", "clinical_significance": "weird_label"},
    ],
    "matched_findings": [{"ref_id": "R1", "pred_id": "P1"}, {"ref_id": "R1", "pred_id": "P1"}],
    "errors": {
        "false_findings": ["P2"],
        "missing_findings": ["R2", "R3"],
        "attribute_errors": [
            {"ref_id": "R1", "pred_id": "P1", "severity": "significant", "error_types": ["severity"], "explanation": "small vs large"},
            {"ref_id": "R1", "pred_id": "P1", "severity": "negligible", "error_types": ["location", "temporal"], "explanation": "x"},
        ],
    },
}


def _json(obj: object) -> str:
    import json

    return json.dumps(obj)


def crimson_crafted() -> list[str]:
    """Well-formed, repairable and broken CRIMSON responses."""
    import copy

    perfect = copy.deepcopy(_VALID)
    perfect["predicted_findings"] = perfect["predicted_findings"][:1]
    perfect["errors"] = {"false_findings": [], "missing_findings": [], "attribute_errors": []}
    perfect["reference_findings"] = perfect["reference_findings"][:1]
    perfect["matched_findings"] = perfect["matched_findings"][:1]
    empty_ref = {"reference_findings": [], "predicted_findings": [], "matched_findings": [],
                 "errors": {"false_findings": [], "missing_findings": [], "attribute_errors": []}}
    false_only = {"reference_findings": [], "predicted_findings": [{"id": "P1", "finding": "mass", "clinical_significance": "urgent"}],
                  "matched_findings": [], "errors": {"false_findings": ["P1"], "missing_findings": [], "attribute_errors": []}}
    negative = copy.deepcopy(_VALID)
    negative["matched_findings"] = []
    negative["errors"]["attribute_errors"] = []
    negative["errors"]["false_findings"] = ["P1", "P2"]
    text = _json(_VALID)
    return [
        text,
        _json(perfect),
        _json(empty_ref),
        _json(false_only),
        _json(negative),
        "```json\n" + text + "\n```",                      # markdown fence: not JSON
        text.replace('"small vs large"', '\u201csmall vs large\u201d'),  # smart quotes
        text.replace("small vs large", "small \\_ large"),   # invalid escape
        text.replace('"pred_id": "P1"}', '"pred_old", "pred_id": "P1"}', 1),  # orphan key
        text.replace(', "attribute_errors"', ', attribute_errors"'),   # missing opening quote
        text.replace("small vs large", 'called "small" here'),  # unescaped inner quotes
        text.replace('"false_findings": ["P2"]', '"false_findings": ["":["P2"]'),  # array-object hybrid
        text[: len(text) // 2],                                # truncated
        '{"errors": {"attribute_errors": [{"pred_id": "P1"}]}}',  # attribute error without ref_id: KeyError
        '{"reference_findings": [{"finding": "no id"}]}',      # finding without id: KeyError
        "[1, 2, 3]",                                           # not an object
        "",
        "no json at all",
        '{"reference_findings": [], "reference_findings": [{"id": "R1"}], "matched_findings": [{"ref_id": "R1"}]}',  # duplicate key
    ]
