"""Rewards for GRPO on cited answers (notebook 09's cells), built on lesson 04's checks
(:mod:`phi2kit.evaluate.qa`) so the reward and the metric cannot drift."""

from __future__ import annotations

import re

from phi2kit.data.webglm import parse_citations
from phi2kit.evaluate.qa import citation_metrics, citation_support, rouge_l, words


def citations_supported(completions, references, **kwargs):
    """Per completion: share of its citations [k] that reference k supports (04's check)."""
    return [citation_support([c], [refs]) for c, refs in zip(completions, references, strict=True)]


def citations_in_range(completions, references, **kwargs):
    """Per completion: share of its citations [k] with 1 <= k <= references shown (04's check)."""
    return [citation_metrics([c], [len(refs)])["share_valid_citations"]
            for c, refs in zip(completions, references, strict=True)]


def make_stops_on_eos(eos_token_id):
    """The stop reward for one tokenizer (trl keeps the EOS that ended a completion)."""

    def stops_on_eos(completion_ids, **kwargs):
        """1.0 where the completion ended on EOS, 0.0 where it ran into max_completion_length."""
        return [float(len(ids) > 0 and ids[-1] == eos_token_id) for ids in completion_ids]

    return stops_on_eos


def sentences(text):
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# words that carry no fact: a sentence of these (and one more word) is in almost any reference
STOPWORDS = {"a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "from",
             "by", "with", "as", "it", "its", "this", "that", "they", "is", "are", "was", "were",
             "be", "can", "do", "does", "has", "have", "about", "because", "so", "not", "very"}


def cheap_answer(completion, references, max_copy=0.8, min_words=2):
    """Why a completion scores without answering, or None (the guard's four cases)."""
    said = re.sub(r"\[[\d,\s]+\]", " ", completion).strip()  # without its citations
    if not re.search(r"[A-Za-z0-9]", said):
        return "empty"
    every, cites = set(range(1, len(references) + 1)), parse_citations(completion)
    if len(every) > 1 and any(set(parse_citations(s)) >= every for s in sentences(completion)):
        return "cites every reference"  # in one sentence: in range, and one of them supports it
    unchecked = any(not parse_citations(s) for s in sentences(completion))  # 04 skips these
    for ref in references:  # a whole reference, cited once: its other sentences go unchecked
        if unchecked and rouge_l(said, ref) >= max_copy and len(cites) < len(sentences(ref)):
            return "copies a reference"
    for s in sentences(completion):  # "A wild[2].": words any reference holds, "supported" by 04
        said_here = words(re.sub(r"\[[\d,\s]+\]", " ", s))  # none: 04 gives a bare [k] no credit
        if parse_citations(s) and said_here and len(said_here - STOPWORDS) < min_words:
            return "too short to cite"
    return None


def guard(completions, references, **kwargs):
    """-1.0 for a cheap answer (see cheap_answer), else 0.0."""
    return [-1.0 if cheap_answer(c, refs) else 0.0
            for c, refs in zip(completions, references, strict=True)]
