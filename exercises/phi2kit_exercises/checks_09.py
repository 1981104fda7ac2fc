"""Criteria of the exercises that go with lesson 09, GRPO (see :mod:`checks_01_02`)."""

from __future__ import annotations

import random

from phi2kit_exercises.grader import NOT_CHECKED, Fail, call, criterion, exercise, expect, need

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


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


class _NotOnePerCompletion(Fail):
    """group_advantages' result is not 1-D, of len(rewards)."""


def _advantages(ns, rewards):
    """group_advantages(rewards, n): it must give one advantage per completion, 1-D."""
    import torch

    rewards, n_gen = rewards
    got = call(ns, "group_advantages", rewards.clone(), n_gen)
    try:
        got = torch.as_tensor(got)
    except Exception:  # noqa: BLE001 - a list of tensors, a string...
        raise Fail(f"group_advantages returned {type(got).__name__}, not a tensor of "
                   "advantages") from None
    if got.dim() != 1:
        raise _NotOnePerCompletion(
            f"group_advantages returned a {got.dim()}-D result of shape {tuple(got.shape)} for "
            f"{len(rewards)} rewards: it should be 1-D, one advantage per completion, in the "
            "order of the rewards")
    if len(got) != len(rewards):
        raise _NotOnePerCompletion(f"group_advantages returned {len(got)} values for "
                                   f"{len(rewards)} rewards: one advantage per completion")
    return got.float()


@criterion(
    "09_a",
    "group_advantages() gives trl's advantages: (reward - group mean) / (group std + 1e-4)",
    "reshape to (prompts, num_generations); subtract each row's mean; divide by each row's "
    "standard deviation with Bessel's correction (torch.std's default) plus 1e-4; return "
    "one advantage per completion (1-D)",
)
def _09a_formula(ns):
    import torch

    g = torch.Generator().manual_seed(0)
    for n_gen in (2, 4, 8):
        # groups spread well apart, so that a missing 1e-4 is left to the flat-group check
        rewards = (torch.rand(3 * n_gen, generator=g) * 3 - 1).view(3, n_gen)
        rewards[:, 0], rewards[:, 1] = -1.0, 2.0
        rewards = rewards.flatten()
        got = _advantages(ns, (rewards, n_gen))
        want = _trl_advantages(rewards, n_gen)
        for i in range(0, len(rewards), n_gen):  # the first group that differs, in full
            group = slice(i, i + n_gen)
            expect(torch.allclose(got[group], want[group], atol=1e-4, rtol=1e-3),
                   f"num_generations={n_gen}, rewards {_rounded(rewards[group])}: got "
                   f"{_rounded(got[group])}, trl gives {_rounded(want[group])}")
            # (reward - mean) / std + 1e-4 is off by 1e-4 everywhere: within the tolerance
            # above, but a group's advantages then no longer sum to zero
            total = float(got[group].double().sum())
            expect(abs(total) < 1e-5 * n_gen,
                   f"num_generations={n_gen}, rewards {_rounded(rewards[group])}: advantages "
                   f"{_rounded(got[group])} sum to {total:.6f}, trl's to 0 (each is a "
                   "deviation from the group's mean, scaled): where does the 1e-4 go?")


@criterion(
    "09_a",
    "a group whose completions score the same gets zero advantage (no NaN)",
    "the 1e-4 in the denominator keeps 0 / 0 away: the group teaches nothing, it does not crash",
)
def _09a_flat(ns):
    import torch

    try:
        got = _advantages(ns, (torch.tensor([1.0, 1.0, 1.0, 1.0]), 4))
    except _NotOnePerCompletion:  # the first check tells it
        raise Fail(NOT_CHECKED) from None
    expect(not torch.isnan(got).any(), f"NaN advantages for a flat group: {got.tolist()}")
    expect(torch.allclose(got, torch.zeros(4)), f"got {_rounded(got)} for the rewards "
           "[1.0, 1.0, 1.0, 1.0], want zeros")


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
    shown = [round(float(a), 2) for a in adv]
    expect(float(adv[0]) >= float(adv.max()) - 1e-4,
           f"advantages {shown}: the gold answer (first row) should have the top advantage")
    cheapest = totals == totals.min()  # the answers with the lowest reward
    low = adv[cheapest]
    lowest = bool((low < 0).all()) and float(low.max()) <= float(adv.min()) + 1e-4
    expect(lowest,
           f"advantages {shown} for rewards {_rounded(totals)}: the lowest-scored answers should "
           "have the lowest advantage, below 0 (worse than the group's mean)")  # fmt: skip
    return f"advantages {shown}"


# --- 09_b: a reward the model can game (Break and fix) ---------------------------------------

exercise("09_b", "A reward the model can game", "Break and fix", "09 §9.3")

# none of these is the notebook's (its answers come from the WebGLM sample): a reward that
# knows the notebook's gold answer by heart knows nothing here
_REFS = [
    "The heron lives in marshes and feeds mainly on frogs . A wild heron lives 12 years .",
    "The lynx lives in forests and feeds mainly on hares . A wild lynx can live for 15 years .",
    "The otter has thick fur because it must stay warm in cold water .",
]
_GOLD = "The lynx lives in forests [2]."
#: a second answer as well supported as the gold one, in other words and another reference:
#: a reward keyed on one exact text (or on "[2]") cannot score both at the top
_SECOND = "The otter has thick fur [3]."
_CHEAP = {
    "empty": "",
    "every reference": "The lynx lives in forests [1][2][3].",
    "one citation repeated": "The lynx lives in forests [2][2][2][2].",
    "a reference copied, cited once": _REFS[0] + " [1]",
    "too short to state a fact": "The lynx [2].",  # 04's check: supported (both words in [2])
    "wrong reference": "The lynx lives in forests [3].",
    "no citation": "The lynx lives in forests.",
}


def _shown(scores: dict[str, float], most: int = 3) -> str:
    """Grader-made answers with their texts (the learner cannot see them otherwise); the
    first ``most`` of them, so that the report's line keeps them whole."""
    shown = [f"{k} {_CHEAP.get(k, k)!r}: {v:g}" for k, v in scores.items()]
    more = f"; and {len(shown) - most} more" if len(shown) > most else ""
    return "; ".join(shown[:most]) + more


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
    scores = _fixed(ns, [_GOLD, _SECOND, *_CHEAP.values()])
    gold, second, rest = scores[0], scores[1], dict(zip(names, scores[2:], strict=True))
    # the right citation repeated may tie with the gold answer (a share), never beat it
    tie_ok = {"one citation repeated"}
    above = {k: v for k, v in rest.items() if v > gold or (v == gold and k not in tie_ok)}
    if above:
        raise Fail(f"the gold answer {_GOLD!r} scores {gold:g}, and these as much or more: "
                   f"{_shown(above)}")
    expect(second >= gold - 1e-9, f"{_SECOND!r}, as well supported by its reference [3] as "
           f"the gold answer {_GOLD!r} by [2], scores {second:g}, the gold one {gold:g}: "
           "score what the answer says against the reference it cites, not one text")
    above = {k: v for k, v in rest.items() if v > second or (v == second and k not in tie_ok)}
    if above:
        raise Fail(f"the well-supported answer {_SECOND!r} scores {second:g}, and these as "
                   f"much or more: {_shown(above)}")
    return f"gold {gold:g}, another supported answer {second:g}; the others {rest}"


@criterion(
    "09_b",
    "fixed_reward() is a share, not a count: more citations cannot buy more reward",
    "a share is supported citations over all the answer's citations: a second supported "
    "citation must not raise it, and an unsupported one must lower it",
)
def _09b_share(ns):
    texts = [_SECOND, _SECOND + " It must stay warm in cold water [3].",
             _SECOND + " It lives in forests [3]."]  # fmt: skip
    one, many, half = _fixed(ns, texts)
    expect(many <= one + 1e-9, f"two supported citations ({texts[1]!r}) score {many:g}, one "
           f"({texts[0]!r}) scores {one:g}")
    expect(half < one - 1e-9, f"one supported and one unsupported citation ({texts[2]!r}) "
           f"score {half:g}, as much as one supported citation alone ({texts[0]!r}: {one:g})")
