"""Criteria of the exercises that go with lesson 08 (see :mod:`checks_01_02`)."""

from __future__ import annotations

import random

from phi2kit_exercises.checks_05_06 import load_made_trees, random_oasst_tree
from phi2kit_exercises.grader import Fail, call, criterion, exercise, expect, need

# --- 08_a: preference pairs from an OASST tree (Write it) ------------------------------------

exercise("08_a", "Preference pairs from an OASST1 tree", "Write it", "08 §8.2")


@criterion(
    "08_a",
    "tree_pairs() gives the same pairs as phi2kit's loader on 60 made-up trees",
    "at each human turn: the usable assistant replies that have a rank, sorted by rank; no "
    "pair when fewer than two or when the best rank is shared; else the best one is chosen "
    "and every other one is rejected in its own pair. Usable: not deleted, review not "
    "failed, in the language; skip an unusable message with its whole subtree",
)
def _08a_pairs(ns):
    from phi2kit.data.oasst_pairs import load_pairs

    rng = random.Random(8)
    made = {"p_bad": 0.08, "p_de": 0.08, "max_replies": 4, "p_tie": 0.15}
    trees = [{"message_tree_id": f"t{i}", "prompt": random_oasst_tree(rng, **made)}
             for i in range(60)]  # fmt: skip
    for tree in trees:
        tree["prompt"].update(deleted=False, review_result=True, lang="en")
    want = [(p["prompt"], p["chosen"], p["rejected"])
            for p in load_made_trees(trees, load_pairs, lang="en")]  # fmt: skip
    got = []
    for tree in trees:
        for pair in call(ns, "tree_pairs", tree, "en"):
            expect(isinstance(pair, dict) and {"prompt", "chosen", "rejected"} <= set(pair),
                   f"tree_pairs should yield dicts with prompt, chosen, rejected; got {pair!r}")
            got.append((pair["prompt"], pair["chosen"], pair["rejected"]))
    if sorted(got) != sorted(want):
        extra, missing = set(got) - set(want), set(want) - set(got)
        example = next(iter(extra or missing))
        raise Fail(f"{len(got)} pairs vs {len(want)}; {len(extra)} not expected, "
                   f"{len(missing)} missing, e.g. {'extra' if extra else 'missing'}: {example}")
    return f"{len(want)} pairs agree"


# --- 08_b: chosen and rejected swapped (Break and fix) ------------------------------------------

exercise("08_b", "Chosen and rejected swapped", "Break and fix", "08 §8.2, §8.7")


@criterion(
    "08_b",
    "the swapped run ranks the held-out pairs the wrong way round",
    "run the 'break' cell: DPO on pairs built with the rank order reversed, then "
    "`broken_acc = reward_accuracy(...)` on the correct eval pairs",
)
def _08b_broken(ns):
    acc = need(ns, "broken_acc")
    expect(acc < 0.5, f"broken_acc = {acc:.2f}: the swapped run should order most pairs wrongly")
    return f"reward accuracy {acc:.2f}"


@criterion(
    "08_b",
    "best_first() puts the best-ranked reply first (rank 0 is the best)",
    "sort by rank ascending: rank 0 first; replies without a rank are not ranked at all",
)
def _08b_order(ns):
    rng = random.Random(3)
    for _ in range(20):
        ranks = rng.sample(range(6), rng.randint(2, 6))
        replies = [{"text": f"r{r}", "rank": r} for r in ranks] + [{"text": "x", "rank": None}]
        rng.shuffle(replies)
        got = [r["rank"] for r in call(ns, "best_first", replies)]
        expect(got == sorted(ranks), f"best_first gave ranks {got}; expected {sorted(ranks)}")


@criterion(
    "08_b",
    "the fixed run ranks the held-out pairs right",
    "rebuild the pairs with best_first, train again, and set "
    "`fixed_acc = reward_accuracy(...)` on the eval pairs",
)
def _08b_fixed(ns):
    acc = need(ns, "fixed_acc")
    expect(acc >= 0.8, f"fixed_acc = {acc:.2f}: expected at least 0.80")
    return f"reward accuracy {acc:.2f}"
