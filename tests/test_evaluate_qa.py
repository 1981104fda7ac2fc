"""Tests for phi2kit.evaluate.qa (the scoring notebook 04 writes in its cells)."""

import pytest

from phi2kit.evaluate.qa import citation_metrics, citation_support, rouge_l
from phi2kit.generation import cut_at_stop


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("green window", "the cat sat") == 0.0
    assert rouge_l("", "the cat sat") == 0.0
    # LCS "the cat the mat" = 4 of 6 words on both sides -> F = 4/6
    assert rouge_l("the cat lay on the mat", "the cat sat in the mat") == pytest.approx(4 / 6)
    assert rouge_l("cats sitting", "cat sits") == pytest.approx(1.0)  # stemmed


def test_citation_metrics():
    answers = ["Yes [1][2].", "No [3].", "Maybe [1, 4] or [x].", "No citation."]
    out = citation_metrics(answers, [2, 2, 4, 3])
    assert out["share_with_citation"] == pytest.approx(3 / 4)
    assert out["n_citations"] == 5
    assert out["share_valid_citations"] == pytest.approx(4 / 5)  # [3] with 2 refs is invalid


def test_citation_metrics_without_citations_and_bad_input():
    assert citation_metrics(["none", "here"], [1, 2]) == {
        "share_with_citation": 0.0,
        "share_valid_citations": 0.0,
        "n_citations": 0,
    }
    with pytest.raises(ValueError, match="one reference count per answer: 2, 1"):
        citation_metrics(["a", "b"], [1])
    with pytest.raises(ValueError, match="one reference count per answer: 0, 0"):
        citation_metrics([], [])


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        ("Sure, here it is.\n### Human: more", ["### Human:"], ("Sure, here it is.", True)),
        ("No stop here.", ["### Human:"], ("No stop here.", False)),
        ("A ### Assistant: B ### Human: C", ["### Human:", "### Assistant:"], ("A", True)),
        ("### Human: at start", "### Human:", ("", True)),
        ("trailing  ", ["", "zzz"], ("trailing  ", False)),
        ("half ### Hum", ["### Human:"], ("half ### Hum", False)),
    ],
)
def test_cut_at_stop(text, stops, expected):
    assert cut_at_stop(text, stops) == expected


def test_citation_support_checks_the_cited_reference():
    refs = [["The otter lives in rivers and eats fish .", "The seal lives on coasts ."]]
    assert citation_support(["The otter lives in rivers [1]."], refs) == 1.0
    assert citation_support(["The otter lives in rivers [2]."], refs) == 0.0  # wrong reference
    assert citation_support(["The otter lives in rivers [3]."], refs) == 0.0  # out of range
    both = "The otter lives in rivers [1]. The seal lives on coasts [1]."
    assert citation_support([both], refs) == 0.5
    assert citation_support(["No citation here."], refs) == 0.0


def test_the_module_holds_what_notebook_04_writes():
    import ast
    import json
    from pathlib import Path

    import phi2kit.evaluate.qa as qa

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "04_webglm_qlora.ipynb"
    cell = next(
        "".join(c["source"])
        for c in json.loads(notebook.read_text())["cells"]
        if "def citation_support(" in "".join(c["source"])
    )

    def parts(source):
        return {
            getattr(n, "name", None) or n.targets[0].id: ast.dump(n)
            for n in ast.parse(source).body
            if isinstance(n, ast.FunctionDef | ast.Assign)
        }

    assert parts(cell) == parts(Path(qa.__file__).read_text())
