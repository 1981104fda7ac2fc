"""Criteria of the exercises that go with lesson 08 (see :mod:`checks_01_02`)."""

from __future__ import annotations

import contextlib
import difflib
import itertools
import random
import sys

from phi2kit_exercises.checks_05_06 import load_made_trees, random_oasst_tree
from phi2kit_exercises.grader import Fail, _first_line, call, criterion, exercise, expect, need

# --- 08_a: preference pairs from an OASST tree (Write it) ------------------------------------

exercise("08_a", "Preference pairs from an OASST1 tree", "Write it", "08 §8.2")


_IDS = itertools.count()


def _msg(role: str, text: str, rank=None, replies=(), **kw) -> dict:
    """One message of a hand-made OASST1 export tree (usable unless ``kw`` says otherwise)."""
    return {"message_id": f"h{next(_IDS)}", "role": role, "text": text,
            "lang": "en", "deleted": False, "review_result": True, "rank": rank,
            "replies": list(replies), **kw}  # fmt: skip


def _pair_key(pair) -> tuple[str, str, str]:
    expect(isinstance(pair, dict) and {"prompt", "chosen", "rejected"} <= set(pair),
           f"tree_pairs should yield dicts with prompt, chosen, rejected; got {pair!r}")
    return pair["prompt"], pair["chosen"], pair["rejected"]


def _refuse(*args, **kwargs):
    raise RuntimeError("phi2kit's pair builder is off while 08_a is graded: the exercise asks "
                       "you to write it")


@contextlib.contextmanager
def _without_package_pairs(ns):
    """phi2kit's own pair builder (load_pairs, build_pairs), refused while the learner's
    tree_pairs runs: wherever it is reachable (the package's modules, the notebook's names);
    all restored afterwards."""
    from phi2kit.data import oasst_pairs

    real = {id(oasst_pairs.load_pairs), id(oasst_pairs.build_pairs)}
    patched = []  # (namespace, name, value)
    spaces = [vars(m) for name, m in list(sys.modules.items())
              if name.split(".")[0] == "phi2kit" and m is not None]  # fmt: skip
    mine = getattr(ns.get("tree_pairs"), "__globals__", None)  # where the learner's code looks
    for space in [*spaces, ns, *([mine] if isinstance(mine, dict) else [])]:
        for name, value in list(space.items()):
            if id(value) in real:
                patched.append((space, name, value))
    try:
        for space, name, _ in patched:
            space[name] = _refuse
        yield
    finally:
        for space, name, value in patched:
            space[name] = value


def _learners_pairs(ns, tree, lang) -> list:
    """tree_pairs(tree, lang), consumed (it may be a generator): its errors say so."""
    with _without_package_pairs(ns):
        pairs = call(ns, "tree_pairs", tree, lang)
        try:
            return list(pairs)
        except Exception as err:  # noqa: BLE001 - the learner's bug, raised while iterating
            raise Fail(f"`tree_pairs` raised {type(err).__name__}: {_first_line(err)}") from None


def _pairs(n: int) -> str:
    return f"{n} pair{'' if n == 1 else 's'}"


def _agree(ns, prompts: list[dict], lang: str | None = "en") -> int:
    """tree_pairs on each tree against phi2kit's loader; fails with one pair that differs."""
    from phi2kit.data.oasst_pairs import load_pairs

    trees = [{"message_tree_id": f"t{i}", "prompt": p} for i, p in enumerate(prompts)]
    want = [(p["prompt"], p["chosen"], p["rejected"])
            for p in load_made_trees(trees, load_pairs, lang=lang)]  # fmt: skip
    got = [_pair_key(pair) for tree in trees for pair in _learners_pairs(ns, tree, lang)]
    if sorted(got) != sorted(want):
        extra = [p for p in got if p not in want]
        missing = [p for p in want if p not in got]
        found = f"{_pairs(len(got))}, expected {len(want)}"
        if extra:  # next to it, the expected pair most like it
            near = sorted(missing or want, key=lambda p: -difflib.SequenceMatcher(
                None, "\n".join(p), "\n".join(extra[0])).ratio())
            expected = f"; expected, e.g.: {near[0]}" if near else ""
            raise Fail(f"{found}; not expected: {extra[0]}{expected}")
        raise Fail(f"{found}; missing: {(missing or [None])[0]}")
    return len(want)


@criterion(
    "08_a",
    "at a human turn, the best-ranked reply is chosen, against each worse one in its own pair",
    "sort the ranked assistant replies by rank (0 is the best): the first one is `chosen` in "
    "every pair, and each of the others is `rejected` once (not neighbours: 0 against 1, 2 "
    "and 3)",
)
def _08a_best_against_each(ns):
    replies = [_msg("assistant", f"reply ranked {r}", rank=r) for r in (2, 0, 3, 1)]
    replies.append(_msg("assistant", "an unranked reply"))
    n = _agree(ns, [_msg("prompter", "Where does the otter live?", replies=replies)])
    return f"{_pairs(n)} from one turn of four ranked replies"


@criterion(
    "08_a",
    "every human turn gives pairs, each prompt the conversation so far, ending in ### Assistant:",
    "walk into every usable reply, carrying the lines so far (### Human: text / ### "
    "Assistant: text, text stripped); a pair's prompt is those lines plus '### Assistant:', "
    "joined by newlines; `chosen` and `rejected` are a space plus the stripped text",
)
def _08a_deeper_turns(ns):
    rng = random.Random(81)
    inner = [_msg("assistant", f" inner {r} ", rank=r) for r in rng.sample(range(2), 2)]
    second = _msg("prompter", "  And what does it eat?  ", replies=inner)
    first = [_msg("assistant", "It lives in rivers.", rank=0, replies=[second]),
             _msg("assistant", "In the sea.", rank=1,
                  replies=[_msg("prompter", "Really?", replies=[
                      _msg("assistant", "yes", rank=0), _msg("assistant", "no", rank=1)])])]
    n = _agree(ns, [_msg("prompter", "Where does the otter live?", replies=first)])
    return f"{_pairs(n)} over three human turns"


@criterion(
    "08_a",
    "no pair from a turn with fewer than two ranked replies, or with a tie for the best rank",
    "count only the assistant replies that have a rank; when the two best share their rank, "
    "there is no best one to choose",
)
def _08a_no_pair(ns):
    turns = [
        [_msg("assistant", "the only ranked", rank=0), _msg("assistant", "unranked")],
        [_msg("assistant", "tied a", rank=0), _msg("assistant", "tied b", rank=0),
         _msg("assistant", "third", rank=1)],
        [_msg("assistant", "best", rank=0), _msg("assistant", "unranked"),
         _msg("assistant", "second", rank=1)],
    ]
    n = _agree(ns, [_msg("prompter", f"question {i}", replies=t) for i, t in enumerate(turns)])
    return f"{_pairs(n)}, from the one turn with a single best reply"


@criterion(
    "08_a",
    "deleted, failed-review and other-language messages are skipped, with their subtrees",
    "usable: not deleted, review_result not False, lang equal to `lang` (any with lang=None); "
    "an unusable message is not ranked, and nothing below it is walked; an unusable prompt "
    "gives nothing",
)
def _08a_unusable(ns):
    below = _msg("prompter", "a turn under a bad reply",
                 replies=[_msg("assistant", "x", rank=0), _msg("assistant", "y", rank=1)])
    replies = [_msg("assistant", "good", rank=1),
               _msg("assistant", "deleted best", rank=0, deleted=True, replies=[below]),
               _msg("assistant", "failed review", rank=2, review_result=False),
               _msg("assistant", "auf Deutsch", rank=3, lang="de")]  # fmt: skip
    prompts = [_msg("prompter", "question", replies=replies),
               _msg("prompter", "a deleted prompt", deleted=True, replies=[
                   _msg("assistant", "a", rank=0), _msg("assistant", "b", rank=1)])]
    n = _agree(ns, prompts, "en") + _agree(ns, prompts, None)
    return f"{_pairs(n)}, for lang='en' and lang=None"


@criterion(
    "08_a",
    "tree_pairs() gives the same pairs as phi2kit's loader on 60 made-up trees",
    "when the checks above pass and this one fails, compare your pairs with load_pairs' "
    "on the printed example: the rules are in the markdown cell above tree_pairs",
)
def _08a_pairs(ns):
    for rule in (_08a_best_against_each, _08a_deeper_turns, _08a_no_pair, _08a_unusable):
        try:
            rule(ns)
        except Fail:
            raise Fail("not checked: it needs the failures above fixed first") from None
    rng = random.Random(8)
    made = {"p_bad": 0.08, "p_de": 0.08, "max_replies": 4, "p_tie": 0.15}
    prompts = [random_oasst_tree(rng, **made) for _ in range(60)]
    for prompt in prompts:
        prompt.update(deleted=False, review_result=True, lang="en")
    return f"{_pairs(_agree(ns, prompts))} agree"


# --- 08_b: chosen and rejected swapped (Break and fix) ------------------------------------------

exercise("08_b", "Chosen and rejected swapped", "Break and fix", "08 §8.2, §8.7")


def _ranked(replies, worst_first=False):
    return sorted((r for r in replies if r["rank"] is not None), key=lambda r: r["rank"],
                  reverse=worst_first)  # fmt: skip


def _measured_on(ns, name: str, worst_first: bool) -> float:
    """``ns[name]``, which reward_accuracy must have measured on the right pairs (the
    notebook's ``measured`` keeps every run): a typed-in figure fails."""
    acc = need(ns, name)
    want = need(ns, "pairs_by")(lambda replies: _ranked(replies, worst_first))
    key = (list(want["chosen"]), list(want["rejected"]))
    runs = [a for ds, a in need(ns, "measured")
            if (list(ds["chosen"]), list(ds["rejected"])) == key]  # fmt: skip
    which = "swapped (worst first)" if worst_first else "best-first"
    expect(runs, f"{name} = {acc}, but no reward_accuracy run trained on the {which} pairs: "
           "a figure is measured, not typed in")
    expect(any(abs(float(acc) - float(a)) < 1e-9 for a in runs),
           f"{name} = {acc}, but reward_accuracy measured {[round(float(a), 4) for a in runs]} "
           f"on the {which} pairs: keep what it returned")
    return float(acc)


@criterion(
    "08_b",
    "the swapped run ranks the held-out pairs the wrong way round",
    "run the 'break' cell as it is: DPO on pairs built with the rank order reversed, then "
    "reward accuracy on the correct eval pairs",
)
def _08b_broken(ns):
    acc = _measured_on(ns, "broken_acc", worst_first=True)
    expect(acc < 0.5, f"broken_acc = {acc:.2f}: the swapped run should order most pairs wrongly")
    return f"reward accuracy {acc:.2f}"


@criterion(
    "08_b",
    "best_first() puts the best-ranked reply first (rank 0 is the best)",
    "OASST1's rank is a place in a ranking, not a score: which end of sorted() should rank 0 "
    "be at? Replies without a rank are not ranked at all",
)
def _08b_order(ns):
    rng = random.Random(3)
    for _ in range(20):
        ranks = rng.sample(range(6), rng.randint(2, 6))
        replies = [{"text": f"r{r}", "rank": r} for r in ranks] + [{"text": "x", "rank": None}]
        rng.shuffle(replies)
        try:
            got = [r["rank"] for r in call(ns, "best_first", replies)]
        except Fail as err:  # the learner cannot see the grader's replies: say what they held
            raise Fail(f"{err} (the grader's replies included one with rank None: "
                       f"{replies})") from None
        expect(got == sorted(ranks), f"best_first gave ranks {got}; expected {sorted(ranks)}")


@criterion(
    "08_b",
    "the fixed run ranks the held-out pairs right",
    "rebuild the pairs with best_first, train again with reward_accuracy, and keep what it "
    "returns in `fixed_acc`",
)
def _08b_fixed(ns):
    acc = _measured_on(ns, "fixed_acc", worst_first=False)
    expect(acc >= 0.8, f"fixed_acc = {acc:.2f}: expected at least 0.80")
    return f"reward accuracy {acc:.2f}"
