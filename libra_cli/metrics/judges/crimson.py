"""CRIMSON (Baharoon et al., arXiv 2603.06183): a MedGemma judge weighs findings by clinical significance.

Equal to ``crimson-score`` 0.2.2 (``CRIMSON/generate_score.py``, ``utils.py``; MIT): the system
message and prompt (:mod:`crimson_prompt`; MedGemmaCRIMSON gets it without the guidelines, as the
package decides by model name), the generation settings of its transformers path (the model's
``generation_config.json`` when it has one, else greedy with 8,192 new tokens), the response as the
text-generation pipeline decodes it, the JSON repair chain (copied below), and the weighted score
``_calculate_crimson`` rounds to 4 decimals. A response the package cannot parse or score is a
failed pair (``None``), left out of the mean as the package's ``evaluate_reports.py`` does.
crimson-score itself needs Python >= 3.12, so it is ported, and ``tests/test_judges_reference.py``
proves the port equal to the package pair by pair.
"""
# ruff: noqa: E501

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from libra_cli.metrics.judges.base import GenRequest, JudgeModel, JudgeResult
from libra_cli.metrics.judges.crimson_prompt import build_prompt

MODELS = {
    "medgemma-4b-it-crimson": JudgeModel("rajpurkarlab/medgemma-4b-it-crimson", "bfloat16"),
}
DEFAULT_MODEL = "medgemma-4b-it-crimson"
DEFAULT_HF_MODEL = "rajpurkarlab/medgemma-4b-it-crimson"
DEFAULT_MAX_NEW_TOKENS = 8192
SYSTEM = "You are an expert radiology evaluator that assesses the accuracy of radiology reports."

# --- copied from crimson-score 0.2.2 CRIMSON/utils.py (the parts parse_json_response uses) ---
# ---------------------------------------------------------------------------
# Regex for fixing invalid JSON backslash escapes
# ---------------------------------------------------------------------------

# Fix invalid JSON backslash escapes (e.g. \_ or \L) that the model may
# produce when echoing back input text.  Valid JSON escapes
# (\" \\ \/ \b \f \n \r \t \uXXXX) are left untouched.
_INVALID_ESCAPE_RE = re.compile(r'\\(?!["\\\//bfnrtu])')

# ---------------------------------------------------------------------------
# Regex for removing orphan keys in JSON objects
# ---------------------------------------------------------------------------

# Matches a bare string value inside a JSON object — a quoted string preceded
# by a comma and followed by a comma or closing brace, but NOT followed by a
# colon.  Example:  ,"pred_old",  or  ,"pred_old"}
# The leading comma is consumed so removal doesn't leave double commas.
_ORPHAN_KEY_AFTER_COMMA_RE = re.compile(r',\s*"[^"]*"\s*(?=\s*[,}])(?!\s*:)')
# Orphan as the first item in an object:  {"orphan","key":"val"}
_ORPHAN_KEY_AT_START_RE = re.compile(r'(?<=\{)\s*"[^"]*"\s*,\s*(?=")')

# Malformed array-object hybrid:  ["":["R1"]  ->  ["R1"]
# The model starts an array, writes an empty-string "key" with a colon, then
# another array — as if confusing array and object syntax.
_MALFORMED_ARRAY_OBJ_RE = re.compile(r'\[""\s*:\s*\[')

# Missing opening quote on a JSON key:  ,attribute_errors":[  ->  ,"attribute_errors":[
# The model drops the opening " on a key name.  Only fires in structural
# positions: after a JSON value closer (] } " or digit) followed by a comma,
# or directly after an opening brace {.  This avoids false positives on
# commas inside string values like "persists, unchanged".
_MISSING_OPEN_QUOTE_RE = re.compile(
    r'([\]}"0-9]\s*,\s*|{\s*)([a-zA-Z_][a-zA-Z0-9_]*")'
)



def _dedupe_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object_pairs_hook that keeps the first occurrence of duplicate keys."""
    result = {}
    for key, value in pairs:
        if key not in result:
            result[key] = value
    return result


def _loads(text: str) -> Any:
    """json.loads with duplicate-key handling (keeps first occurrence)."""
    return json.loads(text, object_pairs_hook=_dedupe_keys)


def _is_structural_quote(text: str, i: int) -> bool:
    """Check if the quote at position *i* is likely a JSON structural delimiter.

    Returns True for quotes that delimit JSON keys/values (after ``:``, before
    ``:`` etc.) and False for quotes that are part of prose inside a string
    value (e.g. the model quoting a phrase in an explanation).
    """
    before = text[i - 1] if i > 0 else ''
    after = text[i + 1] if i + 1 < len(text) else ''
    # Quotes right after : [ { are always structural (opening a value/key)
    if before in (':', '[', '{'):
        return True
    # Quotes right before : ] } are always structural (closing a key/value)
    if after in (':', ']', '}'):
        return True
    # For comma-adjacent quotes, check deeper context.
    # Structural ,"  is preceded by a JSON token closer: " ] } or digit
    # Text      ,"  is preceded by a word character (e.g. yesterday,")
    if before == ',':
        pre_comma = text[i - 2] if i >= 2 else ''
        return pre_comma in ('"', ']', '}') or pre_comma.isdigit()
    if after == ',':
        post_comma = text[i + 2] if i + 2 < len(text) else ''
        return post_comma in ('"', '[', '{') or post_comma.isdigit()
    return False


def _fix_unescaped_quotes(text: str, max_attempts: int = 50) -> Any:
    """Iteratively escape unescaped double-quotes that break JSON parsing.

    When the model uses literal " inside a JSON string value (e.g. to quote
    a phrase in an explanation), the JSON parser sees it as a string
    terminator.  This function locates each offending quote by parsing,
    catching the error position, searching backwards for a non-structural
    quote, escaping it, and retrying.
    """
    for _ in range(max_attempts):
        try:
            return _loads(text)
        except json.JSONDecodeError as e:
            pos = e.pos
            search_start = max(0, pos - 5)
            found = False
            for i in range(pos, search_start - 1, -1):
                if i < len(text) and text[i] == '"' and (i == 0 or text[i - 1] != '\\'):
                    if _is_structural_quote(text, i):
                        continue
                    text = text[:i] + '\\"' + text[i + 1:]
                    found = True
                    break
            if not found:
                raise
    raise json.JSONDecodeError("Max quote-fix attempts reached", text, 0)


def _fix_orphan_keys(text: str) -> str:
    """Remove bare string values inside JSON objects (orphan keys with no value).

    The model sometimes hallucinates partial key fragments (e.g. ``"pred_old"``)
    that appear as bare values in objects, producing invalid JSON like::

        {"ref_id":"R3","pred_old","pred_id":"P2"}

    This function strips them so the JSON becomes parsable.
    """
    text = _ORPHAN_KEY_AFTER_COMMA_RE.sub('', text)
    text = _ORPHAN_KEY_AT_START_RE.sub('', text)
    return text


def parse_json_response(response: str, batch_idx: int | None = None) -> Any:
    """Parse model response as JSON, applying progressive fixes.

    Fix pipeline (each step only attempted if prior steps fail):
    1. Raw parse
    2. Remove orphan keys (bare strings in object context)
    3. Fix invalid backslash escapes (``\\L``, ``\\_``, etc.)
    4. Fix unescaped double-quotes inside string values

    Args:
        response: Raw model output string.
        batch_idx: Optional index for error context in batch evaluation.

    Returns:
        Parsed JSON object (dict).

    Raises:
        ValueError: If the response cannot be parsed as JSON.
    """
    # 0. Pre-parse text fixes
    # Escape curly/smart quotes — they always appear inside JSON string values
    response = response.replace('\u201c', '\\"').replace('\u201d', '\\"')
    response = response.replace('\u2018', "\\'").replace('\u2019', "\\'")
    # Fix malformed array-object hybrids:  ["":["R1"] -> ["R1"]
    response = _MALFORMED_ARRAY_OBJ_RE.sub('[', response)
    # Fix missing opening quote on keys:  ,attribute_errors"  ->  ,"attribute_errors"
    response = _MISSING_OPEN_QUOTE_RE.sub(r'\1"\2', response)
    # 1. Raw
    try:
        return _loads(response)
    except json.JSONDecodeError:
        pass
    # 2. Orphan keys (bare strings in object context, e.g. "pred_old")
    deorphaned = _fix_orphan_keys(response)
    try:
        return _loads(deorphaned)
    except json.JSONDecodeError:
        pass
    # 3. Invalid backslash escapes
    escaped = _INVALID_ESCAPE_RE.sub(r'\\\\', response)
    try:
        return _loads(escaped)
    except json.JSONDecodeError:
        pass
    # 4. Unescaped quotes (try on both raw and escape-fixed variants)
    for text in (response, escaped):
        try:
            return _fix_unescaped_quotes(text)
        except (json.JSONDecodeError, ValueError):
            pass
    ctx = f" for batch item {batch_idx}" if batch_idx is not None else ""
    raise ValueError(
        f"Failed to parse model response as JSON{ctx}\n"
        f"Response ({len(response)} chars):\n{response}"
    )



# --- crimson-score 0.2.2 CRIMSONScore._calculate_crimson, as a function ---
def calculate_crimson(evaluation: Any) -> dict[str, Any]:  # noqa: C901 - the package's function
    """
    Calculate CRIMSON score from evaluation results.

    Long: ``CRIMSONScore._calculate_crimson`` copied statement for statement (``self`` dropped), so that
    it can be compared with the package line by line.

    Args:
        evaluation: Parsed evaluation with matched findings and errors

    Returns:
        Dictionary with scores and metrics
    """
    errors = evaluation.get("errors", {})
    matched = evaluation.get("matched_findings", [])
    reference_findings_list = evaluation.get("reference_findings", [])
    predicted_findings_list = evaluation.get("predicted_findings", [])

    # Weight mapping for clinical significance
    significance_weights = {
        "urgent": 1.0,
        "actionable_not_urgent": 0.5,
        "not_actionable_not_urgent": 0.25,
        "benign_expected": 0.0,
    }

    # Weight mapping for attribute error severity
    attribute_severity_weights = {
        "significant": 0.5,
        "negligible": 0.0,
    }

    def calculate_weighted_count(error_list: list[Any], weights: dict[str, float] = significance_weights,
                                 key: str = "clinical_significance") -> float:
        """Calculate weighted count based on significance/severity."""
        return sum(weights.get(error.get(key, ""), 0.25) for error in error_list)

    ref_weight_by_id = {
        ref["id"]: significance_weights.get(ref.get("clinical_significance", ""), 0.25)
        for ref in reference_findings_list
    }
    pred_weight_by_id = {
        pred["id"]: significance_weights.get(pred.get("clinical_significance", ""), 0.25)
        for pred in predicted_findings_list
    }

    E_false = sum(pred_weight_by_id.get(f_id, 0.0) for f_id in errors.get("false_findings", []))

    E_miss = sum(ref_weight_by_id.get(m_id, 0.0) for m_id in errors.get("missing_findings", []))

    attr_errors = errors.get("attribute_errors", [])
    n_location = sum(1 for e in attr_errors if "location" in e.get("error_types", []))
    n_severity = sum(1 for e in attr_errors if "severity" in e.get("error_types", []))
    n_descriptor = sum(1 for e in attr_errors if "descriptor" in e.get("error_types", []))
    n_measurement = sum(1 for e in attr_errors if "measurement" in e.get("error_types", []))
    n_certainty = sum(1 for e in attr_errors if "certainty" in e.get("error_types", []))
    n_unspecific = sum(1 for e in attr_errors if "unspecific" in e.get("error_types", []))
    n_overinterpretation = sum(1 for e in attr_errors if "overinterpretation" in e.get("error_types", []))
    n_temporal = sum(1 for e in attr_errors if "temporal" in e.get("error_types", []))

    attr_errors_by_ref_id = {}
    for err in attr_errors:
        ref_id = err["ref_id"]
        if ref_id not in attr_errors_by_ref_id:
            attr_errors_by_ref_id[ref_id] = []
        attr_errors_by_ref_id[ref_id].append(err)

    N_G = calculate_weighted_count(reference_findings_list)
    if N_G == 0 and not reference_findings_list:
        N_G = len(matched) + E_miss

    E_penalty = E_false

    # Weighted sum of matched findings with partial credit for attribute errors
    matched_ref_ids = set()
    correct = 0.0
    for m in matched:
        ref_id = m["ref_id"]
        if ref_id in matched_ref_ids:
            continue  # Already counted this reference finding
        matched_ref_ids.add(ref_id)
        base_weight = ref_weight_by_id.get(ref_id, 0.0)

        finding_attr_errors = attr_errors_by_ref_id.get(ref_id, [])

        if not finding_attr_errors:
            correct += base_weight
        else:
            sum_error_weights = sum(
                attribute_severity_weights.get(err.get("severity", ""), 0.25) for err in finding_attr_errors
            )
            credit_factor = base_weight / (base_weight + sum_error_weights) if (base_weight + sum_error_weights) > 0 else 0.0
            correct += base_weight * credit_factor

    errors_more_than_correct = E_penalty - correct

    if N_G == 0:
        S = 1.0 if E_penalty == 0 and E_miss == 0 else -(E_penalty + E_miss + 1)
    else:
        S = (correct - E_penalty) / N_G

    if S >= 0:
        crimson = S
    else:
        if errors_more_than_correct > 0:
            crimson = -1 * errors_more_than_correct / (1 + errors_more_than_correct)
        else:
            crimson = 0

    return {
        "raw_evaluation": evaluation,
        "error_counts": {
            "false_findings": len(errors.get("false_findings", [])),
            "missing_findings": len(errors.get("missing_findings", [])),
            "attribute_errors": len(attr_errors),
            "location_errors": n_location,
            "severity_errors": n_severity,
            "descriptor_errors": n_descriptor,
            "measurement_errors": n_measurement,
            "certainty_errors": n_certainty,
            "unspecific_errors": n_unspecific,
            "overinterpretation_errors": n_overinterpretation,
            "temporal_errors": n_temporal
        },
        "weighted_error_counts": {
            "false_findings": E_false,
            "missing_findings": E_miss,
            "attribute_errors": calculate_weighted_count(attr_errors, attribute_severity_weights, "severity")
        },
        "metrics": {
            "N_G": N_G,  # Number of ground truth findings
            "E_penalty": E_penalty,
            "correct": correct,
            "errors_more_than_correct": errors_more_than_correct,
            "S": S
        },
        "crimson_score": round(crimson, 4)
    }

def score(response: str) -> JudgeResult:
    """``evaluate_batch``'s per-sample step: parse, then score; any exception is a failed pair (None)."""
    try:
        result = calculate_crimson(parse_json_response(response))
    except Exception as exc:  # noqa: BLE001 - the package catches everything here too
        return JudgeResult(None, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}, parsed=False)
    details = {k: result[k] for k in ("error_counts", "weighted_error_counts", "metrics")}
    return JudgeResult(float(result["crimson_score"]), details)


def messages(reference: str, prediction: str, model_id: str, patient_context: dict | None = None) -> list[dict[str, str]]:
    """The chat the package sends: its system message, then the prompt (guidelines off for MedGemmaCRIMSON)."""
    guidelines = model_id != DEFAULT_HF_MODEL
    prompt = build_prompt(reference, prediction, patient_context=patient_context, include_significance_examples=guidelines,
                          include_attribute_guidelines=guidelines, include_context_guidelines=guidelines)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def generation_request(tokenizer: Any, generation_config: Any, prompt_len: int) -> GenRequest:
    """The package's transformers settings: the model's own generation config when it ships one, else greedy 8,192.

    A shipped config without ``max_new_tokens`` gets what ``generate()`` makes of it: 20 new tokens for
    the default ``max_length``, else ``max_length`` counted over the prompt (the package's default batch of 1).
    """
    eos = generation_config.eos_token_id if generation_config is not None else tokenizer.eos_token_id
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
    if generation_config is None or getattr(generation_config, "_from_model_config", False):
        return GenRequest(DEFAULT_MAX_NEW_TOKENS, eos_ids)
    new = generation_config.max_new_tokens
    if new is None:  # transformers 5 leaves unset fields None and falls back to max_length 20 (= 20 new tokens)
        length = generation_config.max_length
        new = 20 if length in (None, 20) else max(1, int(length) - prompt_len)
    if not generation_config.do_sample:
        return GenRequest(int(new), eos_ids)
    return GenRequest(int(new), eos_ids, True, float(generation_config.temperature or 1.0), generation_config.top_k,
                      generation_config.top_p)


class Crimson:
    """The CRIMSON judge: chat prompt ids, generation settings, pipeline-decoded response, score."""

    name = "crimson"
    metric = "CRIMSON"
    models = MODELS
    default_model = DEFAULT_MODEL
    tokenizer_kwargs: dict[str, Any] = {}
    contexts: Sequence[dict | None] | None = None  # per-pair patient context (Python API)

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        tokenizer.padding_side = "left"  # as the package sets it (left padding changes no row's tokens)
        return tokenizer

    def prompt_ids(self, tokenizer: Any, refs: Sequence[str], hyps: Sequence[str], model_id: str) -> list[list[int]]:
        """What the text-generation pipeline feeds the model: the chat template with the generation prompt."""
        ctx = list(self.contexts) if self.contexts is not None else [None] * len(refs)
        out = []
        for r, h, c in zip(refs, hyps, ctx, strict=True):
            ids = tokenizer.apply_chat_template(messages(r, h, model_id, c), add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
            out.append([int(i) for i in ids])
        return out

    def requests(self, prompts: Sequence[Sequence[int]], tokenizer: Any, generation_config: Any) -> list[GenRequest]:
        return [generation_request(tokenizer, generation_config, len(p)) for p in prompts]

    def response(self, tokenizer: Any, prompt: Sequence[int], generated: Sequence[int]) -> str:
        """The pipeline's assistant message: the generated ids decoded with special tokens skipped."""
        return tokenizer.decode(list(generated), skip_special_tokens=True)

    def score(self, response: str) -> JudgeResult:
        return score(response)
