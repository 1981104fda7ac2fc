"""The GRPO rewards of notebook 09 (phi2kit.rewards), on hand-written good and bad answers.

Each test would fail on a wrong reward: one that ignores the check it names, counts
citations instead of their share, reads the stop from the text, or lets a cheap answer through.
"""

import json
from pathlib import Path

import pytest

from phi2kit.evaluate.qa import citation_support, words
from phi2kit.rewards import (
    STOPWORDS,
    cheap_answer,
    citations_in_range,
    citations_supported,
    guard,
    make_stops_on_eos,
)

REFS = [
    "The moose lives in mountains and feeds mainly on berries . A wild moose lives 19 years .",
    "The falcon lives in wetlands and feeds mainly on seeds .",
    "The otter has thick fur because it must stay warm in cold water .",
]
GOOD = "The moose lives in mountains [1]."
WRONG_REF = "The moose lives in mountains [2]."  # in range, but [2] does not say it
OUT_OF_RANGE = "The moose lives in mountains [7]."
NO_CITATION = "The moose lives in mountains."
ROOT = Path(__file__).resolve().parents[1]


def _rows(answers):
    return {"completions": answers, "references": [REFS] * len(answers)}


def test_citations_supported_rewards_the_right_reference_only():
    got = citations_supported(**_rows([GOOD, WRONG_REF, OUT_OF_RANGE, NO_CITATION]))
    assert got == [1.0, 0.0, 0.0, 0.0]


def test_citations_supported_is_a_share_not_a_count():
    # two citations, one supported: 0.5, never more than an answer with the one right citation
    half = "The moose lives in mountains [1][2]."
    assert citations_supported(**_rows([half])) == [0.5]
    assert citations_supported(**_rows([half]))[0] < citations_supported(**_rows([GOOD]))[0]


def test_citations_supported_is_04s_metric_answer_by_answer():
    answers = [GOOD, WRONG_REF, "The falcon lives in wetlands [2]. It has thick fur [3]."]
    for answer, reward in zip(answers, citations_supported(**_rows(answers)), strict=True):
        assert reward == citation_support([answer], [REFS])


def test_citations_in_range_checks_the_references_the_prompt_showed():
    got = citations_in_range(**_rows([GOOD, WRONG_REF, OUT_OF_RANGE, NO_CITATION]))
    assert got == [1.0, 1.0, 0.0, 0.0]
    # the same [3] is out of range where the prompt showed two references
    assert citations_in_range(completions=["It has fur [3]."], references=[REFS[:2]]) == [0.0]
    assert citations_in_range(**_rows(["A [1] and B [9]."])) == [0.5]


def test_stops_on_eos_reads_the_last_token_id():
    stops = make_stops_on_eos(eos_token_id=0)
    assert stops.__name__ == "stops_on_eos"  # trl names the logged reward after it
    ids = [[5, 6, 0], [5, 6, 7], [], [0, 5, 6]]  # stopped; ran out; empty; EOS not at the end
    assert stops(completion_ids=ids, completions=["a", "b", "", "c"]) == [1.0, 0.0, 0.0, 0.0]
    assert make_stops_on_eos(50256)(completion_ids=[[5, 50256], [5, 0]]) == [1.0, 0.0]


def test_guard_passes_real_answers():
    assert guard(**_rows([GOOD, WRONG_REF, NO_CITATION, "The moose [1] and the falcon [2]."])) == [
        0.0, 0.0, 0.0, 0.0]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        (" [1]", "empty"),
        ("[1][2][3]", "empty"),
        ("The moose lives in mountains [1][2][3].", "cites every reference"),
        ("The moose lives in mountains [1, 2, 3].", "cites every reference"),
        (REFS[0] + " [1]", "copies a reference"),
        (REFS[0].replace(" .", ".") + " [1]", "copies a reference"),
        ("The moose lives in mountains and feeds on berries. A wild moose lives 19 years [1].",
         "copies a reference"),
        ("A wild[2].", "too short to cite"),  # the hack GRPO found with beta=0 (lesson 09, 9.8)
        ("The[2].", "too short to cite"),
        ("The moose [1].", "too short to cite"),
        ("The moose lives in mountains [1]. The the the[2].", "too short to cite"),
    ],
)
def test_guard_penalizes_the_cheap_ways_to_score(answer, why):
    assert cheap_answer(answer, REFS) == why
    assert guard(**_rows([answer])) == [-1.0]


def test_the_hack_answers_are_supported_by_04s_check_and_guarded_to_no_credit():
    # 04's check calls them supported (its words are in reference 1): the guard must cancel it
    hacks = ["A wild[1].", "The[1].", "A wild moose [1]. The[1]."]
    assert citations_supported(**_rows(hacks)) == [1.0, 1.0, 1.0]
    assert guard(**_rows(hacks)) == [-1.0, -1.0, -1.0]
    weighted = [s + g for s, g in zip(citations_supported(**_rows(hacks)), guard(**_rows(hacks)),
                                      strict=True)]
    assert max(weighted) <= 0.0 < citations_supported(**_rows([GOOD]))[0]


def test_short_but_real_sentences_and_uncited_ones_pass_the_guard():
    # two content words can state a fact ("It lives in lakes"): the guard needs two, not three
    real = ["It lives in mountains [1].", "A wild moose [1].",
            "Yes. The moose lives in mountains [1]."]  # fmt: skip
    for answer in real:
        assert cheap_answer(answer, REFS) is None, answer
    assert cheap_answer("It lives in mountains [1].", REFS, min_words=3) == "too short to cite"


def test_one_reference_cited_is_not_citing_every_reference():
    assert cheap_answer("The falcon lives in wetlands [1].", REFS[1:2]) is None


def test_copying_is_cheap_only_where_it_leaves_sentences_unchecked():
    # a one-sentence reference copied and cited, or each copied sentence cited: as 04's gold
    assert cheap_answer(REFS[1] + " [2]", REFS) is None
    each = "The moose lives in mountains and feeds on berries [1]. A wild moose lives 19 years [1]."
    assert cheap_answer(each, REFS) is None
    # two sentences, each cited, that a third reference happens to hold too (a gold answer of train)
    sleeps = "sleeps through the winter because food is scarce in the cold months"
    refs = [f"The moose {sleeps} .",  # fmt: skip
            f"A wild heron can live for about 12 years . The heron {sleeps} . A wild moose can "
            "live for about 19 years ."]
    both_cited = f"The moose {sleeps} [1]. A wild moose can live for about 19 years [2]."
    assert cheap_answer(both_cited, refs) is None


def test_the_guard_outweighs_what_a_cheap_answer_gains():
    stops = make_stops_on_eos(0)
    rewards = [citations_supported, citations_in_range, stops, guard]

    def total(answer):
        kw = _rows([answer]) | {"completion_ids": [[1, 2, 0]]}
        return sum(r(**kw)[0] for r in rewards)

    assert total(GOOD) > total(WRONG_REF) > total("") and total(GOOD) > total(REFS[0] + " [1]")
    assert total("The moose lives in mountains [1][2][3].") < total(WRONG_REF)


def _sample(split):
    lines = (ROOT / f"data/webglm/{split}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_shortest_gold_cited_sentence_has_more_content_words_than_the_guard_needs():
    # lesson 09's markdown: the shortest cited sentence of the gold answers has 3 content words
    cited = [s for split in ("train", "validation", "test") for r in _sample(split)
             for s in r["answer"].split(". ") if "[" in s]  # fmt: skip
    shortest = min(len(words(s.split("[")[0]) - STOPWORDS) for s in cited)
    assert len(cited) > 900 and shortest == 3


def test_no_gold_answer_of_the_sample_is_too_short_to_cite():
    rows = [r for split in ("train", "validation", "test") for r in _sample(split)]
    why = [cheap_answer(r["answer"], r["references"]) for r in rows]
    flagged = [r["answer"] for r, w in zip(rows, why, strict=True) if w == "too short to cite"]
    assert len(rows) > 400 and flagged == []


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_the_gold_answers_of_the_sample_score_full_marks_and_pass_the_guard(split):
    rows = _sample(split)
    answers, refs = [r["answer"] for r in rows], [r["references"] for r in rows]
    assert citations_supported(completions=answers, references=refs) == [1.0] * len(rows)
    assert citations_in_range(completions=answers, references=refs) == [1.0] * len(rows)
    assert guard(completions=answers, references=refs) == [0.0] * len(rows)
