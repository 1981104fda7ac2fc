"""The graded exercises: every solution passes, every unsolved copy fails with hints.

The notebooks run in this process through ``phi2kit_exercises.run_notebook`` (no kernel per
notebook), on the tiny profile. ``exercises/`` is not in pytest's testpaths, so nbmake never
runs the unsolved notebooks (which fail by design); these tests do.
"""

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from phi2kit_exercises.grader import EXERCISES, evaluate, get_exercise, grade_notebook

ROOT = Path(__file__).resolve().parents[1]
EXERCISE_DIR = ROOT / "exercises"
NOTEBOOKS = sorted(EXERCISE_DIR.glob("[0-9][0-9]_[a-z]_*.ipynb"))
IDS = [p.name[:4] for p in NOTEBOOKS]
LESSON_INSTALL = nbformat.read(ROOT / "notebooks" / "01_baseline_inference.ipynb", 4).cells[1]


def _both(path: Path) -> list[tuple[str, nbformat.NotebookNode]]:
    solution = EXERCISE_DIR / "solutions" / path.name
    return [("exercise", nbformat.read(path, 4)), ("solution", nbformat.read(solution, 4))]


def test_two_exercises_per_lesson_each_with_a_solution_and_criteria():
    get_exercise(IDS[0])  # loads the criteria
    per_lesson = Counter(i[:2] for i in IDS)
    assert sorted(per_lesson) == ["01", "02", "03", "04", "05", "06", "07", "08", "09"]
    assert min(per_lesson.values()) >= 2 and len(IDS) >= 12, per_lesson
    assert sorted(EXERCISES) == IDS, "every notebook has criteria, and every criterion a notebook"
    assert all(EXERCISES[i].criteria for i in IDS)
    assert {e.kind for e in EXERCISES.values()} == {"Try it", "Write it", "Break and fix"}
    for path in NOTEBOOKS:
        assert (EXERCISE_DIR / "solutions" / path.name).is_file(), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_structure_matches_the_lessons(path):
    ex_id = path.name[:4]
    get_exercise(ex_id)  # loads the criteria (the registry fills on first use)
    for which, nb in _both(path):
        cells = nb.cells
        assert cells[0].source.startswith(f"# {ex_id} · "), which
        assert "colab-badge.svg" in cells[0].source and path.name in cells[0].source
        assert EXERCISES[ex_id].kind in cells[0].source
        # the lessons' Colab install cell, verbatim: when it changes there, sync it here
        assert cells[1].source == LESSON_INSTALL.source, f"{which}: install cell differs"
        params = cells[2]
        assert "parameters" in params.metadata.get("tags", [])
        assert 'PROFILE = "auto"' in params.source
        for line in params.source.splitlines():
            if re.match(r"^[A-Z_0-9]+ = ", line):
                assert "#" in line, f"{which}: parameter without a comment: {line}"
        grade = cells[-1]
        assert "grade" in grade.metadata.get("tags", []) and f'check("{ex_id}"' in grade.source
        dirty = [i for i, c in enumerate(cells) if c.cell_type == "code"
                 and (c.get("outputs") or c.get("execution_count") is not None)]  # fmt: skip
        assert dirty == [], f"{which}: outputs in cells {dirty}; strip them before commit"
        assert "trust_remote_code" not in "".join(c.source for c in cells)
        todo = sum("TODO(" in c.source for c in cells if c.cell_type == "code")
        assert (todo == 0) if which == "solution" else (todo > 0), which


@pytest.fixture()
def tiny_env(monkeypatch):
    monkeypatch.setenv("PHI2KIT_PROFILE", "tiny")


def _copy(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, folder / path.name))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_solution_passes_and_unsolved_fails_with_hints(path, tmp_path, tiny_env):
    ex_id = path.name[:4]
    solved = _copy(EXERCISE_DIR / "solutions" / path.name, tmp_path / "solved")
    report = grade_notebook(solved)
    assert report.cell_error is None, str(report.cell_error)
    assert report.passed, report.text()
    assert len(report.results) == len(EXERCISES[ex_id].criteria)

    # the unsolved copy, next to the solution's outputs (05_a reuses its stand-in adapter)
    unsolved = _copy(path, tmp_path / "unsolved")
    (tmp_path / "unsolved" / "outputs").symlink_to(tmp_path / "solved" / "outputs",
                                                   target_is_directory=True)  # fmt: skip
    (tmp_path / "solved" / "outputs").mkdir(exist_ok=True)
    report = grade_notebook(unsolved)
    text = report.text()
    assert not report.passed and report.failed, text
    assert report.cell_error is not None and report.cell_error.kind == "todo", text
    assert "Traceback" not in text and 'File "' not in text, text
    for result in report.failed:
        assert result.detail and result.hint, text
    assert "not done yet" in text and "hint:" in text


def _ns_from_solution(ex_id: str, **replace) -> dict:
    """The solution's namespace with some names replaced (no notebook run: cheap ones only)."""
    path = next((EXERCISE_DIR / "solutions").glob(f"{ex_id}_*.ipynb"))
    ns: dict = {}
    for cell in nbformat.read(path, 4).cells:
        if cell.cell_type == "code" and "def " in cell.source and "TODO" not in cell.source:
            exec(cell.source.replace("import torch\n", ""), {"torch": __import__("torch")}, ns)
    ns.update(replace)
    return ns


def test_wrong_answers_fail_with_what_was_found():
    """The criteria reject plausible mistakes, not only missing work."""
    import torch

    def pads_by_id(examples, pad_id):  # the pad = eos bug: masks the real EOS target too
        batch = _ns_from_solution("04_a")["pad_batch"](examples, pad_id)
        batch["labels"] = torch.where(batch["input_ids"] == pad_id, -100, batch["labels"])
        return batch

    report = evaluate("04_a", _ns_from_solution("04_a", pad_batch=pads_by_id))
    assert [r.passed for r in report.results] == [True, False], report.text()
    assert "labels differs" in report.failed[0].detail

    def last_column(mask):  # right for left padding only
        return torch.full((mask.shape[0],), mask.shape[1] - 1)

    report = evaluate("03_a", {"last_token_index": last_column, "classify": lambda clf, enc: None})
    assert not report.results[0].passed and "right padding" in report.results[0].detail

    def keeps_deleted(prompt):  # ignores deletions and reviews
        thread, node = [], prompt
        while node is not None:
            thread.append((node["role"], node["text"]))
            replies = sorted(
                node.get("replies") or [], key=lambda m: (m.get("rank") is None, m.get("rank") or 0)
            )
            node = replies[0] if replies else None
        while thread and thread[-1][0] != "assistant":
            thread.pop()
        return thread

    report = evaluate("06_a", {"main_thread": keeps_deleted})
    assert not report.passed and "first difference" in report.results[0].detail

    def crashes(*_):
        raise IndexError("list index out of range")

    report = evaluate("05_b", {"dequantize_into": crashes})
    assert "`dequantize_into` raised IndexError: list index out of range" in report.text()


def _variant(ex_id: str, name: str, old: str = "", new: str = ""):
    """The solution's function ``name``, with ``old`` (once in its cell) made ``new``."""
    path = next((EXERCISE_DIR / "solutions").glob(f"{ex_id}_*.ipynb"))
    source = next(c.source for c in nbformat.read(path, 4).cells if f"def {name}(" in c.source)
    assert not old or source.count(old) == 1, old
    ns: dict = {}
    exec(source.replace(old, new) if old else source, ns)
    return ns[name]


def _failed(report) -> list[int]:
    return [i for i, r in enumerate(report.results) if not r.passed]


@pytest.mark.parametrize(("ex_id", "name", "old", "new"), [
    # unranked replies sorted before ranked ones
    ("06_a", "main_thread", 'key=lambda m: (m.get("rank") is None, m.get("rank") or 0)',
     'key=lambda m: -1 if m.get("rank") is None else m["rank"]'),
    # a missing review (None) taken for a failed one
    ("06_a", "main_thread", 'msg.get("review_result") is not False', 'msg.get("review_result")'),
    ("08_a", "tree_pairs", 'm.get("review_result") is not False', 'm.get("review_result")'),
])  # fmt: skip
def test_rank_and_review_mistakes_fail_06a_08a(ex_id, name, old, new):
    """The made-up trees mix ranked and unranked siblings, and hold unreviewed messages."""
    report = evaluate(ex_id, {name: _variant(ex_id, name, old, new)})
    assert not report.passed and not report.results[-1].passed, report.text()
    assert evaluate(ex_id, {name: _variant(ex_id, name)}).passed  # the solution itself


def test_the_stock_forward_and_right_padding_only_fail_03a():
    import torch

    from phi2kit.classifier import last_token_index

    def stock(clf, enc):  # the classifier's own forward: pools by token id, and pad = eos
        return clf(**enc).logits

    def right_only(clf, enc):  # the mask's sum: the last real token for right padding only
        hidden = clf.model(**enc).last_hidden_state
        return clf.score(hidden)[torch.arange(len(hidden)), enc["attention_mask"].sum(-1) - 1]

    for classify, said in ((stock, "a text ending in EOS: logits differ"),
                           (right_only, "left padding: logits differ")):  # fmt: skip
        report = evaluate("03_a", {"last_token_index": last_token_index, "classify": classify})
        assert not report.passed and said in report.results[1].detail, report.text()


def test_pick_profile_by_compute_capability_passes_01b():
    """The hint's other way: a T4 is compute capability 7.5, bf16 needs 8.0."""
    import torch

    def by_capability():
        if not torch.cuda.is_available():
            return "tiny"
        major, _ = torch.cuda.get_device_capability()
        return "ampere" if major >= 8 else "t4"

    report = evaluate("01_b", {"pick_profile": by_capability})
    pick = next(r for r in report.results if "pick_profile()" in r.what)
    assert pick.passed, report.text()
    never_ampere = {"pick_profile": lambda: "t4" if torch.cuda.is_available() else "tiny"}
    report = evaluate("01_b", never_ampere)
    assert not next(r for r in report.results if "pick_profile()" in r.what).passed


def test_01b_trainer_config_is_checked_for_the_t4_too():
    """A config without fp16 passes on a CPU (the tiny profile has none): the T4 catches it."""
    from trl import SFTConfig

    from phi2kit.profiles import get_profile

    def no_fp16(profile, output_dir):
        return SFTConfig(output_dir=output_dir, bf16=False, optim=profile.optim)

    def right(profile, output_dir):
        return SFTConfig(output_dir=output_dir, fp16=profile.fp16, bf16=profile.bf16,
                         optim=profile.optim)  # fmt: skip

    ns = {"pick_profile": lambda: "tiny", "fixed_profile": get_profile("tiny")}
    graded = {}
    for name, fn in (("no_fp16", no_fp16), ("right", right)):
        report = evaluate("01_b", ns | {"trainer_config": fn})
        graded[name] = next(r for r in report.results if "trainer_config()" in r.what)
    assert graded["right"].passed, graded["right"]
    assert not graded["no_fp16"].passed
    assert "for t4: fp16=False" in graded["no_fp16"].detail


def test_a_transposed_score_table_fails_02b():
    import torch

    wrong = _variant("02_b", "score_batch", "reshape(len(prompts), len(labels))",
                     "reshape(len(labels), len(prompts))")  # fmt: skip
    wrong.__globals__["torch"] = torch  # imported by an earlier cell of the notebook
    report = evaluate("02_b", {"score_batch": wrong})
    assert not report.passed and "shape (3, 4); want (4, 3)" in report.results[0].detail


def test_labels_written_into_input_ids_fail_04b():
    import torch

    def in_place(batch, prompt_lengths):  # labels is input_ids itself: the batch is changed
        labels = batch["input_ids"]
        before_completion = torch.arange(labels.shape[1]) < torch.tensor(prompt_lengths)[:, None]
        labels[(batch["attention_mask"] == 0) | before_completion] = -100
        return labels

    report = evaluate("04_b", {"fix_labels": in_place})
    fix = next(r for r in report.results if "fix_labels()" in r.what)
    assert "changed batch['input_ids'] in place" in fix.detail, report.text()


def test_an_untrained_adapter_fails_02a():
    """A model scored near chance (here the base itself, LoRA B = 0) is not the recipe's."""
    from peft import LoraConfig, get_peft_model

    from phi2kit.data import sample_path
    from phi2kit.data.sentiment import build_prompt, load_financial_news
    from phi2kit.evaluate.scoring import predict_by_scoring
    from phi2kit.models import load_model, load_tokenizer
    from phi2kit_exercises.classification import classification_metrics

    df = load_financial_news(sample_path("financial_news")).groupby("label").head(20)
    prompts, y = [build_prompt(t) for t in df["text"]], list(df["label"])
    tokenizer = load_tokenizer("tiny")
    model = get_peft_model(load_model("tiny", quantize_4bit=False),
                           LoraConfig(r=1, lora_alpha=2, target_modules=["fc1"]))  # fmt: skip
    acc = classification_metrics(y, predict_by_scoring(model, tokenizer, prompts))["accuracy"]
    ns = {"accuracy": {1: acc}, "models": {1: model}, "eval_prompts": prompts, "y_eval": y,
          "ALPHA_PER_R": 2, "TRAIN_RANKS": [1], "tokenizer": tokenizer}  # fmt: skip
    result = next(r for r in evaluate("02_a", ns).results if "accuracy[r]" in r.what)
    assert not result.passed and "within 0.1 of chance (0.333)" in result.detail, result


def test_wrong_rewards_fail_09b():
    """Hidden cases: no constant, no position, no typed-in table passes a criterion."""
    from phi2kit.data.webglm import parse_citations

    solution = _variant("09_b", "fixed_reward")
    answers = {"gold": "The moose lives [1].", "every reference": "The moose lives [1][2]."}
    table = {"answers": answers, "refs": ["The moose lives here .", "b"]}
    ns = {**table, "broken_scores": {"gold": 1.0, "every reference": 2.0}}

    def constant(completions, references, **kwargs):
        return [0.0] * len(completions)

    def first_wins(completions, references, **kwargs):  # gold is first in the notebook's table
        return [1.0 if i == 0 else 0.0 for i in range(len(completions))]

    def counts(completions, references, **kwargs):  # the broken reward again
        return [float(len(parse_citations(c))) for c in completions]

    def hands_back(completions, references, **kwargs):
        return completions

    assert evaluate("09_b", {**ns, "fixed_reward": solution}).passed
    for wrong, failing in [(constant, [1, 2]), (first_wins, [1, 2]), (counts, [1, 2]),
                           (hands_back, [1, 2])]:  # fmt: skip
        report = evaluate("09_b", {**ns, "fixed_reward": wrong})
        assert _failed(report) == failing, (wrong.__name__, report.text())
    report = evaluate("09_b", {**ns, "fixed_reward": first_wins})
    assert "in a batch" in report.results[1].detail and "alone" in report.results[1].detail
    report = evaluate("09_b", {**ns, "fixed_reward": constant})
    assert "unsupported" in report.results[2].detail
    typed = evaluate("09_b", {**ns, "broken_scores": {"gold": 0.0, "every reference": 9.0},
                              "fixed_reward": solution})  # fmt: skip
    assert _failed(typed) == [0] and "not typed in" in typed.results[0].detail


def test_a_reward_keyed_on_one_text_fails_09b():
    """The criteria's answers are not the notebook's, and two different answers are well
    supported: a reward that knows one gold text by heart fails."""
    from phi2kit_exercises.checks_09 import _GOLD

    solution = _variant("09_b", "fixed_reward")
    notebook_gold = "The moose lives in mountains [2]."  # the WebGLM sample's first example
    table = {"answers": {"gold": notebook_gold, "every reference": "The moose lives [1][2][3]."},
             "refs": ["a", "The moose lives in mountains .", "c"]}  # fmt: skip
    ns = {**table, "broken_scores": {"gold": 1.0, "every reference": 3.0}}
    assert evaluate("09_b", {**ns, "fixed_reward": solution}).passed
    for gold in (notebook_gold, _GOLD):
        def keyed(completions, references, gold=gold, **kwargs):
            return [1.0 if c == gold else 0.0 for c in completions]

        report = evaluate("09_b", {**ns, "fixed_reward": keyed})
        assert _failed(report) == [1, 2], report.text()
    assert "as well supported" in report.results[1].detail, report.text()

    def no_guard(completions, references, **kwargs):  # lesson 04's share alone
        from phi2kit.evaluate.qa import citation_support

        return [citation_support([c], [r]) for c, r in zip(completions, references, strict=True)]

    report = evaluate("09_b", {**ns, "fixed_reward": no_guard})
    assert _failed(report) == [1], report.text()
    # the grader's answers are shown with their texts
    assert "too short to state a fact 'The lynx [2].'" in report.results[1].detail


def test_one_mistake_fails_one_check_09a():
    import torch

    from phi2kit_exercises import TODO

    def advantages_with(std=torch.std, eps=1e-4):
        def group_advantages(rewards, num_generations):
            g = torch.as_tensor(rewards, dtype=torch.float32).view(-1, num_generations)
            return ((g - g.mean(1, keepdim=True)) / (std(g, 1, keepdim=True) + eps)).flatten()

        return group_advantages

    def population_std(g, dim, keepdim):
        return g.std(dim, keepdim=keepdim, unbiased=False)

    totals = torch.tensor([3.0, -1.0, 0.5, 1.0, -0.5, 0.0])
    for fn, failing in [(advantages_with(), []), (advantages_with(population_std), [0]),
                        (advantages_with(eps=0.0), [1])]:  # fmt: skip
        ns = {"group_advantages": fn, "totals": totals, "advantages": fn(totals, len(totals))}
        report = evaluate("09_a", ns)
        assert _failed(report) == failing, report.text()

    def no_mean(rewards, num_generations):  # scaled, not centred: nothing falls below 0
        g = torch.as_tensor(rewards, dtype=torch.float32).view(-1, num_generations)
        return (g / (g.std(1, keepdim=True) + 1e-4)).flatten()

    table = torch.tensor([3.0, 0.0, 1.0, 3.0, 0.75, 0.75])  # as the lesson's: the cheapest at 0
    report = evaluate("09_a", {"group_advantages": no_mean, "totals": table,
                               "advantages": no_mean(table, 6)})  # fmt: skip
    assert 2 in _failed(report), report.text()
    assert "the lowest-scored answers should have the lowest advantage, below 0" in (
        report.results[2].detail)

    report = evaluate("09_a", {"group_advantages": lambda rewards, n: TODO("write it")})
    assert "not written yet" in report.results[0].detail
    assert report.results[1].detail.startswith("not checked: it needs the failure above")
    assert report.text().count("not written yet") == 1


def test_advantages_are_one_per_completion_and_zero_sum_09a():
    import torch

    from phi2kit_exercises.grader import CellError

    def unflattened(rewards, num_generations):  # (groups, n): the later cells stop on it
        g = torch.as_tensor(rewards, dtype=torch.float32).view(-1, num_generations)
        return (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)

    def precedence(rewards, num_generations):  # (r - mean) / std + 1e-4
        g = torch.as_tensor(rewards, dtype=torch.float32).view(-1, num_generations)
        return ((g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True) + 1e-4).flatten()

    totals = torch.tensor([3.0, -1.0, 0.5, 1.0, -0.5, 0.0])
    report = evaluate("09_a", {"group_advantages": unflattened, "totals": totals,
                               "advantages": unflattened(totals, 6)})  # fmt: skip
    assert _failed(report) == [0, 1], report.text()
    assert "2-D result of shape (3, 2)" in report.results[0].detail
    assert report.results[1].detail.startswith("not checked")
    report = evaluate("09_a", {"group_advantages": precedence, "totals": totals,
                               "advantages": precedence(totals, 6)})  # fmt: skip
    assert 0 in _failed(report), report.text()
    detail = report.results[0].detail
    assert "rewards [-1.0, 2.0]" in detail and "sum to 0.0002" in detail, detail
    assert not re.search(r"\d\.\d{5,}", detail.replace("0.000200", "")), detail  # rounded

    # every check passes on what the notebook set, but a later cell stopped it: not solved
    solution = _ns_from_solution("09_a")["group_advantages"]
    ns = {"group_advantages": solution, "totals": totals, "advantages": solution(totals, 6)}
    stopped = CellError(9, "TypeError", "unsupported format string", "from phi2kit.rewards")
    report = evaluate("09_a", ns, stopped)
    assert all(r.passed for r in report.results) and not report.passed
    assert "solved." not in report.text() and "not solved yet" in report.text(), report.text()
    assert evaluate("09_a", ns).passed


def test_each_rule_of_08a_has_its_own_check():
    solution = _variant("08_a", "tree_pairs")

    def neighbours(tree, lang="en"):  # 0 against 1, 1 against 2: the 08_a conclusion's question
        by_prompt: dict = {}
        for pair in solution(tree, lang):
            by_prompt.setdefault(pair["prompt"], [pair["chosen"]]).append(pair["rejected"])
        for prompt, replies in by_prompt.items():
            for chosen, rejected in zip(replies, replies[1:], strict=False):
                yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    # a tie at the top still pairs: the solution without its tie test
    tie = ' and ranked[0]["rank"] < ranked[1]["rank"]'
    no_tie_check = _variant("08_a", "tree_pairs", tie, "")

    def top_turn_only(tree, lang="en"):
        first = None
        for pair in solution(tree, lang):
            first = first or pair["prompt"]
            if pair["prompt"] == first:
                yield pair

    assert evaluate("08_a", {"tree_pairs": solution}).passed
    for wrong, failing in [(neighbours, [0, 4]), (no_tie_check, [2, 4]),
                           (top_turn_only, [1, 4])]:  # fmt: skip
        report = evaluate("08_a", {"tree_pairs": wrong})
        assert _failed(report) == failing, (failing, report.text())
        assert report.results[4].detail.startswith("not checked"), report.text()
    report = evaluate("08_a", {"tree_pairs": lambda tree, lang="en": []})
    assert "0 pairs, expected" in report.results[0].detail

    not_stripped = _variant("08_a", "tree_pairs", "{node['text'].strip()}", "{node['text']}")
    report = evaluate("08_a", {"tree_pairs": not_stripped})
    assert _failed(report) == [1, 4], report.text()
    assert "not expected: ('### Human: Where" in report.results[1].detail
    assert "; expected, e.g.: ('### Human: Where" in report.results[1].detail

    def first_pair_only(tree, lang="en"):
        return list(solution(tree, lang))[:1]

    report = evaluate("08_a", {"tree_pairs": first_pair_only})
    assert report.results[0].detail.startswith("1 pair, expected 3"), report.text()


def test_the_package_pair_builder_is_off_while_08a_is_graded():
    import phi2kit.data.oasst_pairs as oasst_pairs

    real = oasst_pairs.load_pairs, oasst_pairs.build_pairs
    source = """
def tree_pairs(tree, lang="en"):  # the package's answer, through a file
    import json, pathlib, tempfile
    path = pathlib.Path(tempfile.mkdtemp()) / "one.trees.jsonl"
    path.write_text(json.dumps(tree) + "\\n")
    return LOADER(path, lang=lang)
"""
    for loader in ("load_pairs", "__import__('phi2kit.data.oasst_pairs').data.oasst_pairs"
                                 ".load_pairs"):  # fmt: skip
        ns = {"load_pairs": real[0]}
        exec(source.replace("LOADER", loader), ns)
        report = evaluate("08_a", ns)
        assert _failed(report) == [0, 1, 2, 3, 4], report.text()
        assert "the exercise asks you to write it" in report.results[0].detail, report.text()
        assert ns["load_pairs"] is real[0]  # restored
    assert (oasst_pairs.load_pairs, oasst_pairs.build_pairs) == real
    assert evaluate("08_a", {"tree_pairs": _variant("08_a", "tree_pairs")}).passed


def test_typed_in_reward_accuracy_fails_08b():
    """08_b's accuracies must come from a recorded reward_accuracy run on the right pairs."""
    path = next((EXERCISE_DIR / "solutions").glob("08_b_*.ipynb"))
    ns: dict = {}
    exec(nbformat.read(path, 4).cells[4].source, ns)  # trees, pairs_by (no training)
    ns["best_first"] = _variant("08_b", "best_first")

    def ranked(replies, reverse):
        return sorted((r for r in replies if r["rank"] is not None), key=lambda r: r["rank"],
                      reverse=reverse)  # fmt: skip

    swapped, right = (ns["pairs_by"](lambda rs, rev=rev: ranked(rs, rev)) for rev in (True, False))
    runs = [(swapped, 0.05), (right, 0.95)]
    ok = {**ns, "measured": runs, "broken_acc": 0.05, "fixed_acc": 0.95}
    assert evaluate("08_b", ok).passed
    typed = evaluate("08_b", {**ok, "measured": runs[:1], "fixed_acc": 0.9})
    assert _failed(typed) == [2] and "not typed in" in typed.results[2].detail
    other = evaluate("08_b", {**ok, "fixed_acc": 0.9})
    assert _failed(other) == [2] and "measured [0.95]" in other.results[2].detail
    wrong_pairs = evaluate("08_b", {**ok, "measured": [(swapped, 0.95)], "broken_acc": 0.95})
    assert _failed(wrong_pairs) == [0, 2], wrong_pairs.text()

    def no_none(replies):  # sorts the unranked reply too: None < int raises
        return sorted(replies, key=lambda r: r["rank"])

    crash = evaluate("08_b", {**ok, "best_first": no_none})
    assert _failed(crash) == [1] and "raised TypeError" in crash.results[1].detail
    assert "included one with rank None" in crash.results[1].detail, crash.text()


def test_typed_in_phi2_saving_fails_01a():
    import math

    from phi2kit_exercises.checks_01_02 import PHI2_LINEAR_SIZES, constant_bytes

    right = sum(constant_bytes(n, False) - constant_bytes(n, True) for n in PHI2_LINEAR_SIZES)
    ns = {"PHI2_LINEAR_SIZES": PHI2_LINEAR_SIZES, "constant_bytes": constant_bytes}

    def no_table(n, double_quant):  # forgets the 4 bytes per 256 blocks and the code table
        return math.ceil(n / 64) * (1 if double_quant else 4)

    assert evaluate("01_a", {**ns, "phi2_saved_mb": right / 1e6}).results[2].passed
    typed = evaluate("01_a", {**ns, "phi2_saved_mb": 117.0}).results[2]
    assert not typed.passed and "do not type it in" in typed.detail
    wrong = evaluate("01_a", {**ns, "constant_bytes": no_table, "phi2_saved_mb": 118.0})
    detail = wrong.results[2].detail
    assert "does not reproduce the measurement with double quantization" in detail, detail
    assert "code table" in detail and "117.1" not in detail, detail  # not Phi-2's figure
    mib = evaluate("01_a", {**ns, "phi2_saved_mb": right / 2**20}).results[2]
    assert not mib.passed and "MB here is 1e6 bytes" in mib.detail, mib.detail


def test_a_model_still_double_quantized_is_not_measured_against_01a():
    """A misspelled config field leaves double quantization on: the check of `constants`
    then says it cannot check, rather than a figure the grader computed."""
    from phi2kit_exercises.checks_01_02 import _grader_nf4, _measured
    from phi2kit_exercises.grader import EXERCISES

    double, single = _grader_nf4(True), _grader_nf4(False)
    still = {"with_dq": double, "without_dq": double,  # bnb_4bit_use_double_qaunt = False
             "constants": {"double": _measured(double), "single": _measured(double)}}
    report = evaluate("01_a", still)
    assert _failed(report)[:2] == [0, 1], report.text()
    assert report.results[1].detail.startswith("not checked"), report.text()
    assert not re.search(r"holds \d", report.text()), report.text()
    ok = {"with_dq": double, "without_dq": single,
          "constants": {"double": _measured(double), "single": _measured(single)}}
    assert [r.passed for r in evaluate("01_a", ok).results[:2]] == [True, True]
    off = evaluate("01_a", {**ok, "constants": {"double": 1, "single": _measured(single)}})
    assert "with_dq holds" in off.results[1].detail, off.text()
    hints = [c.hint for c in EXERCISES["01_a"].criteria]
    assert "= False" not in hints[0] and "quant_state" in hints[1], hints

def test_a_stopped_cell_is_counted_from_one(tmp_path):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from phi2kit_exercises import run_notebook

    nb = new_notebook(cells=[new_markdown_cell("# title"), new_code_cell("x = 1"),
                             new_code_cell("# a comment\ny = TODO('write y')")])  # fmt: skip
    nb.cells[2].source = "from phi2kit_exercises import TODO\n" + nb.cells[2].source
    nbformat.write(nb, tmp_path / "nb.ipynb")
    _, error = run_notebook(tmp_path / "nb.ipynb")
    assert str(error) == ("cell 3 (`from phi2kit_exercises import TODO`) is not done yet: "
                          "write y")  # fmt: skip
    # a TODO inside a function: the cell that defines it is named, and the one that called it
    nb.cells[1].source = ("from phi2kit_exercises import TODO\n\n"
                          "def f():\n    return TODO('write f')")  # fmt: skip
    nb.cells[2].source = "y = f()"
    nbformat.write(nb, tmp_path / "nb.ipynb")
    _, error = run_notebook(tmp_path / "nb.ipynb")
    assert str(error) == ("cell 2 (`from phi2kit_exercises import TODO`) is not done yet "
                          "(reached from cell 3): write f")  # fmt: skip


def test_exercises_use_current_apis_and_portable_paths():
    sources = [c.source for p in NOTEBOOKS for _, nb in _both(p) for c in nb.cells]
    sources += [p.read_text() for p in (EXERCISE_DIR / "phi2kit_exercises").glob("*.py")]
    # transformers 5 deprecates it (FutureWarning; removed in v6)
    assert not [s for s in sources if "gradient_checkpointing_enable(" in s]
    # a path up from the notebook's folder only works from one folder (05_a looks upwards)
    assert not [s for s in sources if '"../' in s]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PHI2KIT_PROFILE": "tiny", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "phi2kit.commands.main", "exercises", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_cli_grades_a_solved_and_an_unsolved_copy(tmp_path):
    name = next(p.name for p in NOTEBOOKS if p.name.startswith("06_a"))
    solved = _copy(EXERCISE_DIR / "solutions" / name, tmp_path / "mine")
    ok = _cli("check", "06_a", str(solved), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and "solved." in ok.stdout and "FAIL" not in ok.stdout

    # default path: exercises/06_a_*.ipynb under the working directory
    _copy(EXERCISE_DIR / name, tmp_path / "exercises")
    bad = _cli("check", "06_a", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "hint:" in bad.stdout and "not done yet" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr

    missing = _cli("check", "06_a", str(tmp_path / "nope.ipynb"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such notebook" in missing.stdout


def test_cli_names_the_exercises_for_an_unknown_one(capsys):
    from phi2kit.commands.main import main

    assert main(["exercises", "check", "99_z"]) == 2
    out = capsys.readouterr().out
    assert "error: unknown exercise '99_z'; choose one of 01_a, 01_b, 02_a" in out
    assert "[" not in out and '"' not in out


def test_cli_names_the_exercise_of_a_wrong_notebook_before_running_it(capsys):
    from phi2kit.commands.main import main

    other = EXERCISE_DIR / "solutions" / "02_b_label_scoring.ipynb"
    assert main(["exercises", "check", "04_a", str(other)]) == 2
    out = capsys.readouterr().out
    assert out.strip() == (f"phi2kit exercises: error: {other} is exercise 02_b's notebook (its "
                           f"title), not 04_a's: phi2kit exercises check 02_b {other}")
    assert "running" not in out  # nothing was run


def test_cli_takes_a_notebook_path_alone(tmp_path, capsys):
    from phi2kit.commands.main import main

    # the id comes from the file's name; the notebook's title is then checked against it
    mine = _copy(EXERCISE_DIR / "solutions" / "02_b_label_scoring.ipynb", tmp_path)
    renamed = mine.rename(tmp_path / "04_a_mine.ipynb")
    assert main(["exercises", "check", str(renamed)]) == 2
    out = capsys.readouterr().out
    assert "is exercise 02_b's notebook (its title), not 04_a's" in out, out
    assert main(["exercises", "check", str(tmp_path / "mine.ipynb")]) == 2
    out = capsys.readouterr().out
    assert "does not start with an exercise id" in out and "unknown exercise" not in out, out

    solved = _copy(next((EXERCISE_DIR / "solutions").glob("09_a_*.ipynb")), tmp_path / "s")
    assert main(["exercises", "check", str(solved)]) == 0
    out = capsys.readouterr().out
    assert "Exercise 09_a" in out and "solved." in out, out


def test_cli_lists_every_exercise(capsys):
    from phi2kit.commands.main import main

    assert main(["exercises", "list"]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in IDS) and "Break and fix" in out


def test_find_notebook_takes_the_exercise_before_jupyters_copy_of_it(tmp_path):
    from phi2kit_exercises import find_notebook

    for name in ("04_a_completion_mask.ipynb", "04_a_completion_mask-Copy1.ipynb"):
        (tmp_path / name).write_text("{}")
    assert find_notebook("04_a", tmp_path).name == "04_a_completion_mask.ipynb"
