"""Criteria of the exercises that go with lesson 09, GRPO (see :mod:`checks_01_02`)."""

from __future__ import annotations

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
        rewards = torch.rand(3 * n_gen, generator=g) * 3 - 1
        got = torch.as_tensor(call(ns, "group_advantages", rewards.clone(), n_gen)).flatten()
        want = _trl_advantages(rewards, n_gen)
        shapes = f"{tuple(got.shape)} values for {tuple(want.shape)} rewards"
        expect(got.shape == want.shape, shapes)
        expect(torch.allclose(got.float(), want, atol=1e-4),
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
    "advantages = group_advantages(totals, len(totals)), totals from the rewards table",
)
def _09a_ranking(ns):
    import torch

    totals = torch.as_tensor(need(ns, "totals"), dtype=torch.float32).flatten()
    adv = torch.as_tensor(need(ns, "advantages"), dtype=torch.float32).flatten()
    want = _trl_advantages(totals, len(totals))
    expect(torch.allclose(adv, want, atol=1e-4), "advantages is not group_advantages(totals, ...)")
    expect(int(adv.argmax()) == 0, "the gold answer (first row) should have the top advantage")
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
    got = call(ns, "fixed_reward", completions=answers, references=[_REFS] * len(answers),
               completion_ids=[[1, 2, 0]] * len(answers))  # fmt: skip
    got = [float(x) for x in got]
    expect(len(got) == len(answers), f"{len(got)} rewards for {len(answers)} completions")
    return got


@criterion(
    "09_b",
    "the broken reward is measured: a cheap answer beats the gold answer",
    "broken_scores = count_citations(...) on the answers of the table; one cheap answer "
    "scores more than the gold one",
)
def _09b_broken(ns):
    scores = need(ns, "broken_scores")
    gold = float(scores["gold"])
    beaten = [k for k, v in scores.items() if k != "gold" and float(v) > gold]
    expect(beaten, f"no answer beats the gold one ({gold}) under the broken reward: {dict(scores)}")
    return f"cheap answers above the gold one: {beaten}"


@criterion(
    "09_b",
    "fixed_reward() ranks the gold answer above every cheap one (a repeated citation may tie)",
    "score the share of citations the cited reference supports (lesson 04's citation_support, "
    "one answer at a time), and subtract a penalty for the cheap answers (phi2kit.rewards.guard)",
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
    "divide supported citations by all the answer's citations: [2][2][2] must not beat [2]",
)
def _09b_share(ns):
    one, many = _fixed(ns, ["The moose lives in mountains [2].",
                            "The moose lives in mountains [2]. It lives in mountains [2]."])
    expect(many <= one + 1e-9, f"two supported citations score {many}, one scores {one}")
