"""Scoring cited answers (notebook 04's cells): ROUGE-L, citation rate and range, and
whether the cited reference supports the sentence (a lexical check).
"""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

from phi2kit.data.webglm import parse_citations

ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction, reference):
    """ROUGE-L F-measure: longest common subsequence of (stemmed) words, in [0, 1]."""
    return float(ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def citation_metrics(answers, n_references):
    """Share of answers that cite, and share of citations [k] with 1 <= k <= references shown."""
    if len(answers) != len(n_references) or not answers:
        n, m = len(answers), len(n_references)
        raise ValueError(f"need one reference count per answer: {n}, {m}")
    cites = [parse_citations(a) for a in answers]
    n_cites = sum(len(c) for c in cites)
    n_valid = sum(1 <= k <= n for c, n in zip(cites, n_references, strict=True) for k in c)
    return {"share_with_citation": sum(bool(c) for c in cites) / len(answers),
            "share_valid_citations": n_valid / n_cites if n_cites else 0.0,  # none: no credit
            "n_citations": n_cites}


def words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def citation_support(answers, references, min_overlap=0.8):
    """Share of citations [k] whose reference k holds >= min_overlap of the sentence's words."""
    supported = total = 0
    for answer, refs in zip(answers, references, strict=True):
        for sentence in re.split(r"(?<=[.!?])\s+", answer):
            said = words(re.sub(r"\[[\d,\s]+\]", " ", sentence))  # without its citations
            for k in parse_citations(sentence):
                total += 1
                if said and 1 <= k <= len(refs):
                    supported += len(said & words(refs[k - 1])) / len(said) >= min_overlap
    return supported / total if total else 0.0
