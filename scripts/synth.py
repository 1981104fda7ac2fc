"""A small made-up world that this project writes itself.

It feeds two things:

- the pretraining corpus of the tiny Phi (news paragraphs, encyclopedia passages, chat
  transcripts, ``Instruct:/Output:`` pairs and small Python functions);
- the sample sets in ``data/`` (financial headlines, WebGLM-style QA, OASST-style trees).

Every name, sentence and fact here is invented from the word lists below; nothing is
copied from a published dataset. All generators take a ``random.Random`` so that output
is reproducible from a seed.
"""

from __future__ import annotations

import random

# --- finance ------------------------------------------------------------------------------

_CO_HEAD = ["Nor", "Bal", "Kes", "Ver", "Lum", "Tar", "Sol", "Mer", "Oak", "Fen", "Vär", "Kal"]
_CO_TAIL = ["vik", "tron", "dale", "ex", "mont", "gard", "ia", "on", "lux", "sen"]
_CO_FORM = ["Oyj", "Group", "plc", "AB", "Corp", "Holdings"]
_METRICS = [
    "net sales",
    "operating profit",
    "net profit",
    "revenue",
    "order intake",
    "earnings per share",
    "cash flow",
    "gross margin",
]
_PRODUCTS = [
    "paper machine",
    "software",
    "steel",
    "elevator",
    "network",
    "shipping",
    "packaging",
    "engine",
    "retail",
    "forest",
]
_CITIES = ["Helsinki", "Tampere", "Oulu", "Espoo", "Turku", "Stockholm", "Tallinn", "Riga"]
_QUARTERS = [
    "the first quarter",
    "the second quarter",
    "the third quarter",
    "the fourth quarter",
    "the first half",
    "January-June",
    "January-September",
]
_ROLES = ["CEO", "CFO", "chairman", "head of sales", "director of operations"]
_PEOPLE = ["Anna Virta", "Mikko Salo", "Liisa Koski", "Jonas Berg", "Eva Lind", "Pekka Aho"]

_POSITIVE = [
    "{co} 's {metric} rose {pct} % to EUR {x} mn in {q} of {y}",
    "{co} wins {product} order worth EUR {x} mn",
    "{co} raises its outlook for {y} after strong demand",
    "{metric} of {co} increased to EUR {x} mn from EUR {x2} mn",
    "{co} shares jump {pct} % after record {metric}",
    "{co} reports higher {metric} and expands in {city}",
    "{co} returned to profit in {q} , with {metric} up {pct} %",
    "Demand for {co} {product} grew strongly , and profit improved",
]
_NEGATIVE = [
    "{co} 's {metric} fell {pct} % to EUR {x} mn in {q} of {y}",
    "{co} to cut {n} jobs as {product} demand weakens",
    "{co} lowers its guidance for {y} after weak sales",
    "{metric} of {co} decreased to EUR {x} mn from EUR {x2} mn",
    "{co} shares drop {pct} % after a loss in {q}",
    "{co} swung to an operating loss of EUR {x} mn",
    "{co} warns of lower {metric} and closes its plant in {city}",
    "Sales of {co} {product} declined , and the loss widened",
]
_NEUTRAL = [
    "{co} will publish its interim report for {q} on {day} {month}",
    "{co} is headquartered in {city} and employs {n} people",
    "{co} appoints {person} as {role}",
    "The agreement between {co} and {co2} was signed in {city}",
    "{co} operates {n} stores in {city} and nearby regions",
    "{co} {product} unit will be led by {person} from {month}",
    "{co} holds its annual general meeting in {city} on {day} {month}",
    "The company 's {product} business is based in {city}",
]
SENTIMENT_TEMPLATES = {"positive": _POSITIVE, "negative": _NEGATIVE, "neutral": _NEUTRAL}
_MONTHS = ["January", "February", "March", "April", "May", "June", "September", "October"]


def company(rng: random.Random) -> str:
    return f"{rng.choice(_CO_HEAD)}{rng.choice(_CO_TAIL)} {rng.choice(_CO_FORM)}"


def headline(rng: random.Random, sentiment: str) -> str:
    """A made-up financial headline whose wording carries ``sentiment``."""
    x = rng.randint(2, 900)
    return rng.choice(SENTIMENT_TEMPLATES[sentiment]).format(
        co=company(rng),
        co2=company(rng),
        metric=rng.choice(_METRICS),
        pct=rng.randint(2, 60),
        x=x,
        x2=x + rng.randint(-50, 50) or 1,
        q=rng.choice(_QUARTERS),
        y=rng.randint(2005, 2012),
        product=rng.choice(_PRODUCTS),
        n=rng.randint(20, 900),
        city=rng.choice(_CITIES),
        person=rng.choice(_PEOPLE),
        role=rng.choice(_ROLES),
        day=rng.randint(1, 28),
        month=rng.choice(_MONTHS),
    )


# --- encyclopedia world: the facts behind QA and chat -----------------------------------------

_ANIMALS = [
    "otter",
    "heron",
    "badger",
    "lynx",
    "beaver",
    "swift",
    "marten",
    "crane",
    "seal",
    "hedgehog",
    "falcon",
    "moose",
]
_HABITATS = ["rivers", "wetlands", "forests", "mountains", "coasts", "meadows", "lakes"]
_FOODS = ["fish", "insects", "seeds", "berries", "small mammals", "plants", "shellfish"]
_TRAITS = [
    ("sleeps through the winter", "sleep through the winter", "food is scarce in the cold months"),
    ("travels in large groups", "travel in large groups", "groups spot danger sooner"),
    ("hunts at night", "hunt at night", "its prey is active in the dark"),
    ("builds nests near water", "build nests near water", "the water keeps predators away"),
    ("has thick fur", "have thick fur", "it must stay warm in cold water"),
    ("migrates south in autumn", "migrate south in autumn", "it follows the warm weather"),
    ("marks its territory", "mark its territory", "it wants to keep rivals away"),
]


def animal_facts(rng: random.Random, animal: str) -> dict[str, str]:
    """Stable facts for an animal: the same animal always gets the same facts."""
    r = random.Random(f"facts-{animal}")
    trait, trait_base, reason = r.choice(_TRAITS)
    return {
        "animal": animal,
        "habitat": r.choice(_HABITATS),
        "food": r.choice(_FOODS),
        "trait": trait,
        "trait_base": trait_base,
        "reason": reason,
        "years": str(r.randint(4, 30)),
    }


def fact_sentences(f: dict[str, str]) -> list[str]:
    a = f["animal"]
    return [
        f"The {a} lives in {f['habitat']} and feeds mainly on {f['food']} .",
        f"The {a} {f['trait']} because {f['reason']} .",
        f"A wild {a} can live for about {f['years']} years .",
    ]


_QUESTIONS = [
    ("Where does the {a} live?", "The {a} lives in {habitat}", 0),
    ("What does the {a} eat?", "The {a} feeds mainly on {food}", 0),
    ("Why does the {a} {trait_base}?", "The {a} {trait} because {reason}", 1),
    ("How long does a {a} live?", "A wild {a} can live for about {years} years", 2),
]


def qa_example(rng: random.Random, n_refs: int | None = None) -> dict:
    """A WebGLM-style example: question, cited answer and numbered references."""
    return _qa(rng, n_refs)[0]


def _qa(rng: random.Random, n_refs: int | None) -> tuple[dict, dict[str, str]]:
    a = rng.choice(_ANIMALS)
    f = animal_facts(rng, a)
    q_t, ans_t, which = rng.choice(_QUESTIONS)
    fill = dict(f, a=a)
    n_refs = n_refs or rng.randint(2, 5)
    refs = []
    for _ in range(n_refs):
        other = animal_facts(rng, rng.choice([x for x in _ANIMALS if x != a]))
        refs.append(" ".join(rng.sample(fact_sentences(other), k=rng.randint(2, 3))))
    gold = rng.randrange(n_refs)
    own = fact_sentences(f)
    refs[gold] = " ".join([own[which]] + rng.sample(own[:which] + own[which + 1 :], k=1))
    answer = f"{ans_t.format(**fill)} [{gold + 1}]."
    if rng.random() < 0.4:  # a second cited sentence from another reference about the animal
        extra = rng.choice([i for i in range(3) if i != which])
        second = (gold + 1) % n_refs
        refs[second] = refs[second] + " " + own[extra]
        answer += f" {own[extra].rstrip(' .')} [{second + 1}]."
    return {"question": q_t.format(**fill), "answer": answer, "references": refs}, f


# --- chat ---------------------------------------------------------------------------------

_FOLLOW_UPS = [
    ("Thanks! Can you say more?", "Sure. {extra}"),
    ("Is that true for all of them?", "Mostly, yes. {extra}"),
    ("Can you keep it short?", "Of course. {short}"),
]


def chat_turns(rng: random.Random, n_exchanges: int | None = None) -> list[tuple[str, str]]:
    """A made-up conversation as (role, text) pairs, roles ``prompter``/``assistant``."""
    turns: list[tuple[str, str]] = []
    ex, f = _qa(rng, n_refs=2)
    turns.append(("prompter", ex["question"]))
    reply = ex["answer"].split(" [")[0] + "."
    turns.append(("assistant", reply))
    for _ in range((n_exchanges or rng.randint(1, 3)) - 1):
        q, r = rng.choice(_FOLLOW_UPS)
        extra = rng.choice(fact_sentences(f)).rstrip(" .") + "."
        turns += [("prompter", q), ("assistant", r.format(extra=extra, short=reply))]
    return turns


# --- code ---------------------------------------------------------------------------------

_FUNCS = [
    ("add", "a, b", "return a + b"),
    ("multiply", "a, b", "return a * b"),
    ("square", "x", "return x * x"),
    ("is_even", "n", "return n % 2 == 0"),
    ("first", "items", "return items[0]"),
    ("total", "items", "return sum(items)"),
    ("maximum", "items", "return max(items)"),
    ("greet", "name", 'return "Hello, " + name'),
]


def code_snippet(rng: random.Random) -> str:
    name, args, body = rng.choice(_FUNCS)
    doc = f'    """Return the {name.replace("_", " ")} result."""\n' if rng.random() < 0.5 else ""
    return f"def {name}({args}):\n{doc}    {body}\n"


# --- the pretraining corpus ---------------------------------------------------------------


_TONES = ["positive", "negative", "neutral", "mixed"]
_OPINIONS = [
    "Analysts called the tone of the report {tone} .",
    "The market reaction to the news from {co} was {tone} .",
    "One headline can be read as {tone} news and another as {tone2} news .",
    "The sentiment of the financial press about {product} firms was {tone} this week .",
    "To classify a headline , read it and decide whether its sentiment is {tone} .",
    "Some readers found the {product} news {tone} , others found it {tone2} .",
]


def opinion(rng: random.Random) -> str:
    """Sentences that use sentiment words with no fixed link to the facts around them."""
    return rng.choice(_OPINIONS).format(
        tone=rng.choice(_TONES),
        tone2=rng.choice(_TONES),
        co=company(rng),
        product=rng.choice(_PRODUCTS),
    )


def document(rng: random.Random) -> str:
    """One pretraining document. Documents are joined with ``<|endoftext|>``."""
    kind = rng.choices(
        ["news", "facts", "qa", "chat", "instruct", "code", "list"], weights=[4, 3, 2, 2, 1, 1, 1]
    )[0]
    if kind == "news":
        sents = [
            headline(rng, rng.choice(["positive", "negative", "neutral", "neutral"])) + " ."
            for _ in range(rng.randint(2, 5))
        ]
        for _ in range(rng.randint(0, 2)):
            sents.insert(rng.randrange(len(sents) + 1), opinion(rng))
        return " ".join(sents)
    if kind == "facts":
        return " ".join(
            s for a in rng.sample(_ANIMALS, 2) for s in fact_sentences(animal_facts(rng, a))
        )
    if kind == "list":  # numbered sources, as in a bibliography: teaches [1], [2], ...
        ex = qa_example(rng)
        return "Sources:\n" + "\n".join(f"[{i}] {r}" for i, r in enumerate(ex["references"], 1))
    if kind == "qa":
        ex = qa_example(rng)
        q, a = rng.choice([("Q:", "A:"), ("Question:", "Answer:")])
        return f"{q} {ex['question']}\n{a} {ex['answer'].split(' [')[0]}."
    if kind == "chat":  # no end marker: a base model keeps inventing turns, as Phi-2 does
        turns = chat_turns(rng, rng.randint(2, 3))
        tag = {"prompter": "### Human:", "assistant": "### Assistant:"}
        return "\n".join(f"{tag[r]} {t}" for r, t in turns)
    if kind == "instruct":
        ex = qa_example(rng)
        return f"Instruct: {ex['question']}\nOutput: {ex['answer'].split(' [')[0]}."
    return code_snippet(rng)


def corpus(n_docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [document(rng) for _ in range(n_docs)]
