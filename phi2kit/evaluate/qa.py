"""Evaluation of generated answers (notebooks 04 and 06).

ROUGE-L against a reference answer, citation checks for WebGLM-style answers, how often
generation stopped on its own, and a side-by-side table of base vs tuned answers.

    rouge_l(generated_answer, reference_answer)
    citation_metrics(answers, [len(ex["references"]) for ex in examples])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from phi2kit.data.webglm import parse_citations


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words, stemmed) in [0, 1].

    Uses Google's ``rouge_score`` package; an empty prediction or reference scores 0.
    """
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def citation_metrics(answers: Sequence[str], n_references: Sequence[int]) -> dict:
    """How often answers cite, and how many of the citations point at a real reference.

    Args:
        answers: Generated answers.
        n_references: For each answer, how many references its prompt showed.

    Returns:
        ``share_with_citation``: share of answers with at least one citation;
        ``share_valid_citations``: citations ``[k]`` with ``1 <= k <= n`` over all
        citations, defined as 0.0 when there are no citations at all (a model that never
        cites gets no credit; ``n_citations`` tells the two cases apart);
        ``n_citations``: total number of citations.
    """
    if len(answers) != len(n_references):
        raise ValueError(
            f"got {len(answers)} answers but {len(n_references)} reference counts; "
            "pass one count per answer"
        )
    if not answers:
        raise ValueError("no answers to score")
    n_with, n_cites, n_valid = 0, 0, 0
    for answer, n in zip(answers, n_references, strict=True):
        cites = parse_citations(answer)
        n_with += bool(cites)
        n_cites += len(cites)
        n_valid += sum(1 <= k <= n for k in cites)
    return {
        "share_with_citation": n_with / len(answers),
        "share_valid_citations": n_valid / n_cites if n_cites else 0.0,
        "n_citations": n_cites,
    }


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def citation_support(
    answers: Sequence[str], references: Sequence[Sequence[str]], min_overlap: float = 0.8
) -> float:
    """Share of citations whose reference actually supports the sentence that cites it.

    A citation ``[k]`` in a sentence counts as supported when reference ``k`` contains at
    least ``min_overlap`` of the sentence's words (citations removed). This is a lexical
    check: enough for extractive answers like WebGLM's, not a judgement of paraphrases.
    Citations outside the reference list count as unsupported. Returns 0.0 when nothing is
    cited.
    """
    supported = total = 0
    for answer, refs in zip(answers, references, strict=True):
        for sentence in re.split(r"(?<=[.!?])\s+", answer):
            cited = parse_citations(sentence)
            words = _words(re.sub(r"\[[\d,\s]+\]", " ", sentence))
            for k in cited:
                total += 1
                if words and 1 <= k <= len(refs):
                    supported += len(words & _words(refs[k - 1])) / len(words) >= min_overlap
    return supported / total if total else 0.0


def stop_rate(finished: Sequence[bool]) -> float:
    """Share of generations that stopped on their own (EOS or a stop string).

    The rest ran into ``max_new_tokens``. Raises ``ValueError`` on an empty list.
    """
    if not finished:
        raise ValueError("no generations to score")
    return sum(bool(f) for f in finished) / len(finished)


def side_by_side(
    questions: Sequence[str],
    base_answers: Sequence[str],
    tuned_answers: Sequence[str],
    references: Sequence[str] | None = None,
):
    """A ``pandas.DataFrame`` with one row per question: base vs tuned answer.

    With ``references`` (the reference answers) it adds the reference and the ROUGE-L of
    each answer against it (``rouge_l_base``, ``rouge_l_tuned``).
    """
    import pandas as pd

    columns = {"question": questions, "base": base_answers, "tuned": tuned_answers}
    if references is not None:
        columns["reference"] = references
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"all inputs need the same length, got {lengths}")
    df = pd.DataFrame({name: list(values) for name, values in columns.items()})
    if references is not None:
        df["rouge_l_base"] = [
            rouge_l(p, r) for p, r in zip(df["base"], df["reference"], strict=True)
        ]
        df["rouge_l_tuned"] = [
            rouge_l(p, r) for p, r in zip(df["tuned"], df["reference"], strict=True)
        ]
    return df
