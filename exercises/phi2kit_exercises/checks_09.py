"""Criteria of the exercises that go with lesson 09, GRPO (see :mod:`checks_01_02`)."""

from __future__ import annotations

import random

from phi2kit_exercises.grader import Fail, call, criterion, exercise, expect, need

# --- 09_a: the group baseline (Write it) -----------------------------------------------------

exercise("09_a", "The group baseline: GRPO's advantages by hand", "Write it", "09 §9.1")


def _trl_advantages(rewards, num_generations):
    """trl 1.16's advantages (scale_rewards="group"), from its own ``nanstd``."""
    import torch
    from trl.trainer.utils import nanstd

    groups = torch.as_tensor(rewards, dtype=torch.float32).view(-1, num_generations)
    mean = groups.nanmean(dim=1, keepdim=True)
    std = nanstd(groups, dim=1).unsqueeze(1)
    return ((groups - mean) / (std + 1e-4)).flatten()


@criterion(
    "09_a",
    "group_advantages() gives trl's advantages: (reward - group mean) / (group std + 1e-4)",
    "reshape to (prompts, num_generations); subtract each row's mean; divide by each row's "
    "standard deviation with Bessel's correction (torch.std's default) plus 1e-4",
)
def _09a_formula(ns):
    import torch

    g = torch.Generator().manual_seed(0)
    for n_gen in (2, 4, 8):
        # groups spread well apart, so that a missing 1e-4 is left to the flat-group check
        rewards = (torch.rand(3 * n_gen, generator=g) * 3 - 1).view(3, n_gen)
        rewards[:, 0], rewards[:, 1] = -1.0, 2.0
        rewards = rewards.flatten()
        got = torch.as_tensor(call(ns, "group_advantages", rewards.clone(), n_gen)).flatten()
        want = _trl_advantages(rewards, n_gen)
        shapes = f"{tuple(got.shape)} values for {tuple(want.shape)} rewards"
        expect(got.shape == want.shape, shapes)
        expect(torch.allclose(got.float(), want, atol=1e-4, rtol=1e-3),
               f"num_generations={n_gen}: got {got[:4].tolist()}, trl gives {want[:4].tolist()}")


@criterion(
    "09_a",
    "a group whose completions score the same gets zero advantage (no NaN)",
    "the 1e-4 in the denominator keeps 0 / 0 away: the group teaches nothing, it does not crash",
)
def _09a_flat(ns):
    import torch

    got = torch.as_tensor(call(ns, "group_advantages", torch.tensor([1.0, 1.0, 1.0, 1.0]), 4))
    expect(not torch.isnan(got).any(), f"NaN advantages for a flat group: {got.tolist()}")
    expect(torch.allclose(got.float(), torch.zeros(4)), f"got {got.tolist()}, want zeros")


@criterion(
    "09_a",
    "the lesson's answers are ranked by advantage: gold first, the cheap answers last",
    "run the table's cells as they are, after group_advantages: `advantages` is "
    "group_advantages(totals, len(totals))",
)
def _09a_ranking(ns):
    import torch

    totals = torch.as_tensor(need(ns, "totals"), dtype=torch.float32).flatten()
    adv = torch.as_tensor(need(ns, "advantages"), dtype=torch.float32).flatten()
    # a wrong group_advantages is the first check's failure: here only the table's own run
    # is checked (advantages from these totals), and the ranking with trl's advantages
    try:
        mine = torch.as_tensor(ns["group_advantages"](totals.clone(), len(totals))).flatten()
    except Exception:  # the first check reports it
        mine = None
    if mine is not None and mine.shape == adv.shape:
        expect(torch.allclose(adv, mine.float(), atol=1e-4, equal_nan=True),
               "advantages is not group_advantages(totals, len(totals)): run the table's cell "
               "again")
    want = _trl_advantages(totals, len(totals))
    expect(int(want.argmax()) == 0, f"totals {totals.tolist()}: the gold answer (first row) "
           "should have the top reward: are these the table's rewards?")
    return f"advantages {[round(float(a), 2) for a in adv]}"


# --- 09_b: a reward the model can game (Break and fix) ---------------------------------------

exercise("09_b", "A reward the model can game", "Break and fix", "09 §9.3")

_REFS = [
    "The heron lives in mountains and feeds mainly on shellfish . A wild heron lives 12 years .",
    "The moose lives in mountains and feeds mainly on berries .",
    "The otter has thick fur because it must stay warm in cold water .",
]
_GOLD = "The moose lives in mountains [2]."
_CHEAP = {
    "empty": "",
    "every reference": "The moose lives in mountains [1][2][3].",
    "one citation repeated": "The moose lives in mountains [2][2][2][2].",
    "a reference copied, cited once": _REFS[0] + " [1]",
    "too short to state a fact": "The moose [2].",  # 04's check: supported (both words in [2])
    "wrong reference": "The moose lives in mountains [3].",
    "no citation": "The moose lives in mountains.",
}


def _fixed(ns, answers):
    """fixed_reward on ``answers``, asked in a shuffled order (so that no position is the gold
    one's) and answer by answer; the scores come back in the order of ``answers``."""
    order = random.Random(9).sample(range(len(answers)), len(answers))
    if len(answers) > 2:
        while order[0] == 0 or order[-1] == 0:  # the gold answer never first, never last
            order = order[1:] + order[:1]
    shuffled = [answers[i] for i in order]
    got = call(ns, "fixed_reward", completions=shuffled, references=[_REFS] * len(shuffled),
               completion_ids=[[1, 2, 0]] * len(shuffled))  # fmt: skip
    got = list(got)
    expect(len(got) == len(shuffled), f"{len(got)} rewards for {len(shuffled)} completions")
    bad = [x for x in got if not isinstance(x, int | float) and not hasattr(x, "__float__")]
    if bad:
        raise Fail(f"fixed_reward should give one number per completion; got {bad[0]!r}")
    scores = [0.0] * len(answers)
    for i, x in zip(order, got, strict=True):
        scores[i] = float(x)
    for i, answer in enumerate(answers):  # one at a time: the same score, whatever the batch
        alone = call(ns, "fixed_reward", completions=[answer], references=[_REFS],
                     completion_ids=[[1, 2, 0]])  # fmt: skip
        expect(len(alone) == 1 and abs(float(alone[0]) - scores[i]) < 1e-6,
               f"{answer!r} scores {scores[i]} in a batch, {list(alone)} alone: score each "
               "answer on its own text and references, not on its place in the batch")
    return scores


def _count_citations(completions, references):  # the notebook's broken reward
    from phi2kit.data.webglm import parse_citations

    return [float(sum(1 <= k <= len(r) for k in parse_citations(c)))
            for c, r in zip(completions, references, strict=True)]  # fmt: skip


@criterion(
    "09_b",
    "the broken reward is measured: a cheap answer beats the gold answer",
    "run the 'break' cell as it is: it scores the table's answers with count_citations and "
    "keeps them in broken_scores",
)
def _09b_broken(ns):
    scores, answers, refs = need(ns, "broken_scores"), need(ns, "answers"), need(ns, "refs")
    counted = _count_citations(list(answers.values()), [refs] * len(answers))
    want = dict(zip(answers, counted, strict=True))
    expect(dict(scores) == want, f"broken_scores = {dict(scores)}, but counting the citations "
           f"of the answers gives {want}: broken_scores is measured, not typed in")
    gold = float(scores["gold"])
    beaten = [k for k, v in scores.items() if k != "gold" and float(v) > gold]
    expect(beaten, f"no answer beats the gold one ({gold}) under the broken reward: {dict(scores)}")
    return f"cheap answers above the gold one: {beaten}"


@criterion(
    "09_b",
    "fixed_reward() ranks the gold answer above every cheap one (a repeated citation may tie)",
    "start from lesson 04's citation check, one answer at a time (it is a share, so extra "
    "citations cannot add up); then look at which cheap answers still tie with the gold one, "
    "and what lesson 09's guard in phi2kit.rewards costs them",
)
def _09b_fixed(ns):
    names = list(_CHEAP)
    scores = _fixed(ns, [_GOLD, *_CHEAP.values()])
    gold, rest = scores[0], dict(zip(names, scores[1:], strict=True))
    # the right citation repeated may tie with the gold answer (a share), never beat it
    tie_ok = {"one citation repeated"}
    above = {k: v for k, v in rest.items() if v > gold or (v == gold and k not in tie_ok)}
    if above:
        raise Fail(f"gold scores {gold}, and these as much or more: {above}")
    return f"gold {gold}; the others {rest}"


@criterion(
    "09_b",
    "fixed_reward() is a share, not a count: more citations cannot buy more reward",
    "a share is supported citations over all the answer's citations: a second supported "
    "citation must not raise it, and an unsupported one must lower it",
)
def _09b_share(ns):
    one, many, half = _fixed(ns, ["The moose lives in mountains [2].",
                                  "The moose lives in mountains [2]. It lives in mountains [2].",
                                  "The moose lives in mountains [2]. It lives in mountains [3]."])
    expect(many <= one + 1e-9, f"two supported citations score {many}, one scores {one}")
    expect(half < one - 1e-9, f"one supported and one unsupported citation score {half}, "
           f"as much as one supported citation alone ({one})")
