"""GREEN (Ostmeier et al., EMNLP Findings 2024): an LLM judge counts clinically significant errors.

Ported line for line from the authors' code (Stanford-AIMI/GREEN ``green_score/green.py`` and
``utils.py`` at d72c195, which RadEval 2.2.1 vendors): the prompt (each report cut to 300 words),
the chat template the authors set on the tokenizer at run time, tokenisation (``add_eos_token``,
right truncation at 2048 tokens), greedy decoding with ``max_length=2048`` counted over the
left-padded batch of 8 the authors generate in, decoding of the whole sequence, ``clean_responses``,
``parse_error_counts`` and the score ``matched / (matched + significant errors)`` (0 when nothing
matched). The package cannot be wrapped: it is not on PyPI, needs transformers 4 (``batch_encode_plus``)
and generates one batch at a time; ``tests/test_judges_reference.py`` proves the port equal to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from libra_cli.metrics.judges.base import GenRequest, JudgeModel, JudgeResult

MODELS = {
    "radllama2-7b": JudgeModel("StanfordAIMI/GREEN-radllama2-7b", "float16"),
    "radphi2": JudgeModel("StanfordAIMI/GREEN-RadPhi2", "float16"),
}
DEFAULT_MODEL = "radllama2-7b"
BATCH = 8  # GREEN.batch_size: max_length counts the left-padded batch of this size
MAX_LENGTH = 2048  # GREEN.max_length: prompt truncation and prompt + generation

CATEGORIES = ("Clinically Significant Errors", "Clinically Insignificant Errors", "Matched Findings")
SUB_CATEGORIES = (
    "(a) False report of a finding in the candidate",
    "(b) Missing a finding present in the reference",
    "(c) Misidentification of a finding's anatomic location/position",
    "(d) Misassessment of the severity of a finding",
    "(e) Mentioning a comparison that isn't in the reference",
    "(f) Omitting a comparison detailing a change from a prior study",
)
# the authors' run-time chat template (GREEN.__init__), byte for byte
CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['from'] == 'human' %}\n{{ '<|user|>\n' + message['value'] + "
    "eos_token }}\n{% elif message['from'] == 'system' %}\n{{ '<|system|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'gpt' %}\n{{ '<|assistant|>\n'  + message['value'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def make_prompt(text1: str, text2: str, max_len: int = 300) -> str:
    """``green_score.utils.make_prompt``: reference and candidate, each cut to ``max_len`` words."""
    text1 = " ".join(text1.split()[:max_len])
    text2 = " ".join(text2.split()[:max_len])
    return (
        "Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report "
        "composed by expert radiologists.\n\n    Process Overview: You will be presented with:\n\n    1. The criteria for "
        "making a judgment.\n    2. The reference radiology report.\n    3. The candidate radiology report.\n    4. The "
        "desired format for your assessment.\n\n    1. Criteria for Judgment:\n\n    For each candidate report, determine:"
        "\n\n    The count of clinically significant errors.\n    The count of clinically insignificant errors.\n\n    "
        "Errors can fall into one of these categories:\n\n    a) False report of a finding in the candidate.\n    b) "
        "Missing a finding present in the reference.\n    c) Misidentification of a finding's anatomic location/position."
        "\n    d) Misassessment of the severity of a finding.\n    e) Mentioning a comparison that isn't in the reference."
        "\n    f) Omitting a comparison detailing a change from a prior study.\n    Note: Concentrate on the clinical "
        "findings rather than the report's writing style. Evaluate only the findings that appear in both reports.\n\n"
        f"    2. Reference Report:\n    {text1}\n\n    3. Candidate Report:\n    {text2}\n\n    4. Reporting Your "
        "Assessment:\n\n    Follow this specific format for your output, even if no errors are found:\n    ```\n    "
        "[Explanation]:\n    <Explanation>\n\n    [Clinically Significant Errors]:\n    (a) <Error Type>: <The number "
        "of errors>. <Error 1>; <Error 2>; ...; <Error n>\n    ....\n    (f) <Error Type>: <The number of errors>. "
        "<Error 1>; <Error 2>; ...; <Error n>\n\n    [Clinically Insignificant Errors]:\n    (a) <Error Type>: <The "
        "number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n    ....\n    (f) <Error Type>: <The number of "
        "errors>. <Error 1>; <Error 2>; ...; <Error n>\n\n    [Matched Findings]:\n    <The number of matched "
        "findings>. <Finding 1>; <Finding 2>; ...; <Finding n>\n    ```\n"
    )


def clean_up_tokenization(out_string: str) -> str:
    """transformers 4's ``clean_up_tokenization``, which the authors' decoding applies (``clean_up_tokenization_spaces
    = True``) and transformers 5 no longer applies to BPE tokenizers."""
    return (out_string.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve").replace(" 're", "'re"))


def clean_responses(response: str) -> str:
    """``green_score.utils.clean_responses`` (its ``("a" or "b") in response`` tests only the first string)."""
    if "[Explanation]:" in response:
        if "<|assistant|>" in response:
            response = response.split("<|assistant|>")[-1]
        if "[Explanation]:\n    <Explanation>\n" in response:
            response = response.split("[Explanation]:")[1]
        else:
            response = response.split("[Explanation]:")[-1]
    if "<|assistant|>" in response:
        response = response.split("<|assistant|>")[-1]
    return response.replace("</s>", "").replace("<unk>", "")


def parse_error_counts(text: str, category: str) -> tuple[int, list[int]]:
    """``GREEN.parse_error_counts`` (``for_reward=False``): (sum of counts, counts of (a)-(f))."""
    if category not in CATEGORIES:
        raise ValueError(f"Category {category} is not a valid category. Please choose from {list(CATEGORIES)}.")
    category_text = re.search(rf"\[{category}\]:\s*(.*?)(?:\n\s*\n|\Z)", text, re.DOTALL)
    sum_counts = 0
    sub_counts = [0 for _ in range(6)]
    if not category_text:
        return sum_counts, sub_counts
    if category_text.group(1).startswith("No"):
        return sum_counts, sub_counts
    if category == "Matched Findings":
        counts = re.findall(r"^\b\d+\b(?=\.)", category_text.group(1))  # the authors': no re.MULTILINE
        if len(counts) > 0:
            sum_counts = int(counts[0])
        return sum_counts, sub_counts
    sub_categories = [s.split(" ", 1)[0] + " " for s in SUB_CATEGORIES]
    matches = sorted(re.findall(r"\([a-f]\) .*", category_text.group(1)))
    if len(matches) == 0:
        matches = sorted(re.findall(r"\([1-6]\) .*", category_text.group(1)))
        sub_categories = [f"({i})" + " " for i in range(1, len(SUB_CATEGORIES) + 1)]
    for position, sub_category in enumerate(sub_categories):
        for match in matches:
            if match.startswith(sub_category):
                count = re.findall(r"(?<=: )\b\d+\b(?=\.)", match)
                if len(count) > 0:
                    sub_counts[position] = int(count[0])
    return sum(sub_counts), sub_counts


def compute_green(response: str) -> float:
    """``GREEN.compute_green``: matched / (matched + significant errors); 0 when nothing matched."""
    _, sig_errors = parse_error_counts(response, CATEGORIES[0])
    matched_findings, _ = parse_error_counts(response, CATEGORIES[2])
    if matched_findings == 0:
        return 0
    return matched_findings / (matched_findings + sum(sig_errors))


def score(response: str) -> JudgeResult:
    """Per-pair GREEN score and the counts the authors' ``results_df`` reports."""
    _, sig = parse_error_counts(response, CATEGORIES[0])
    _, insig = parse_error_counts(response, CATEGORIES[1])
    matched, _ = parse_error_counts(response, CATEGORIES[2])
    details: dict[str, Any] = {"significant_errors": sig, "insignificant_errors": insig, "matched_findings": matched}
    return JudgeResult(float(compute_green(response)), details, parsed="[Matched Findings]" in response)


def _adds_eos(tokenizer: Any) -> bool:
    """Whether transformers 4 honours ``add_eos_token`` for this tokenizer (its Llama and Gemma classes)."""
    import json
    from pathlib import Path

    config = Path(getattr(tokenizer, "name_or_path", "")) / "tokenizer_config.json"
    name = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class", "") if config.is_file() else ""
    return str(name).removesuffix("Fast") in ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer")


class Green:
    """The GREEN judge: prompt ids, per-pair generation budget, response text, score."""

    name = "green"
    metric = "GREEN"
    models = MODELS
    default_model = DEFAULT_MODEL

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """What ``GREEN.__init__`` does to the tokenizer (template, pad = eos; its space clean-up is in :meth:`response`)."""
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    # add_eos_token is applied below as transformers 4 applied it (transformers 5 applies it to any tokenizer)
    tokenizer_kwargs = {"use_fast": True, "padding_side": "left"}

    def prompt_ids(self, tokenizer: Any, refs: Sequence[str], hyps: Sequence[str], model_id: str) -> list[list[int]]:
        """The token ids ``get_response`` feeds the model (each row without its left padding).

        ``AutoTokenizer(..., add_eos_token=True)`` in the authors' transformers 4 appends the stop token for
        Llama / Gemma tokenizers only (CodeGen's, Phi-2's, ignores it); truncation to 2048 keeps the special
        tokens and cuts the text between them.
        """
        texts = [tokenizer.apply_chat_template([{"from": "human", "value": make_prompt(r, h)}, {"from": "gpt", "value": ""}],
                                               tokenize=False, add_generation_prompt=True) for r, h in zip(refs, hyps, strict=True)]
        eos = [tokenizer.eos_token_id] if _adds_eos(tokenizer) else []
        out = []
        for text in texts:
            full = list(tokenizer(text)["input_ids"])
            plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            lead = full[:len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []
            out.append(lead + plain[:MAX_LENGTH - len(lead) - len(eos)] + eos)
        return out

    def requests(self, prompts: Sequence[Sequence[int]], tokenizer: Any, generation_config: Any) -> list[GenRequest]:
        """Greedy; ``max_length=2048`` over the authors' left-padded batches of 8 (in input order)."""
        out = []
        for start in range(0, len(prompts), BATCH):
            width = max(len(p) for p in prompts[start:start + BATCH])
            budget = max(1, MAX_LENGTH - width)  # generate() adds at least one token
            out.extend(GenRequest(budget, (tokenizer.eos_token_id,)) for _ in prompts[start:start + BATCH])
        return out

    def response(self, tokenizer: Any, prompt: Sequence[int], generated: Sequence[int]) -> str:
        """``batch_decode`` of the whole row (special tokens skipped, spaces cleaned up), then ``clean_responses``."""
        text = tokenizer.decode(list(prompt) + list(generated), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return clean_responses(clean_up_tokenization(text))

    def score(self, response: str) -> JudgeResult:
        return score(response)
