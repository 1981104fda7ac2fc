"""Local copies of the three hub data sets, laid out and typed as published, rows our own.

The loaders read the hub with ``datasets.load_dataset(hub_id, ...)``. Passing one of these
folders as ``hub_id`` runs that same call, through the real ``datasets`` code, on files with
each data set's published features and file layout:

- ``OpenAssistant/oasst1``: ``data/{train,validation}-00000-of-00001.parquet``, one message
  per row, with all 18 published fields (``detoxify`` a struct, ``emojis`` and ``labels``
  sequences of structs, ``rank`` a nullable int32);
- ``THUDM/webglm-qa``: ``data/{train,validation,test}.jsonl`` with ``question``, ``answer``
  and ``references`` (a list of strings);
- ``takala/financial_phrasebank``: its Parquet export ``sentences_50agree/train/0000.parquet``
  with ``sentence`` and ``label`` (a ClassLabel: 0 negative, 1 neutral, 2 positive).

Each train split holds bad rows of the kinds real rows have (null text, an empty reference
list, a citation out of range, an unknown label, a missing parent), so the hub path's
``skip_bad`` is tested on them. All text here was written for these tests.

    python tests/hub_copies.py /tmp/hub      # writes the three folders there
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
from datasets import ClassLabel, Features, List, Value

OASST_FEATURES = Features(
    {
        "message_id": Value("string"),
        "parent_id": Value("string"),
        "user_id": Value("string"),
        "created_date": Value("string"),
        "text": Value("string"),
        "role": Value("string"),
        "lang": Value("string"),
        "review_count": Value("int32"),
        "review_result": Value("bool"),
        "deleted": Value("bool"),
        "rank": Value("int32"),
        "synthetic": Value("bool"),
        "model_name": Value("string"),
        "detoxify": {
            name: Value("float64")
            for name in (
                "toxicity",
                "severe_toxicity",
                "obscene",
                "identity_attack",
                "insult",
                "threat",
                "sexual_explicit",
            )
        },
        "message_tree_id": Value("string"),
        "tree_state": Value("string"),
        "emojis": {"name": List(Value("string")), "count": List(Value("int32"))},
        "labels": {
            "name": List(Value("string")),
            "value": List(Value("float64")),
            "count": List(Value("int32")),
        },
    }
)
WEBGLM_FEATURES = Features(
    {"question": Value("string"), "answer": Value("string"), "references": List(Value("string"))}
)
PHRASEBANK_FEATURES = Features(
    {"sentence": Value("string"), "label": ClassLabel(names=["negative", "neutral", "positive"])}
)


def oasst_message(mid: str, role: str, parent: str | None, tree: str, text: str | None, **kw):
    """One message row with every published field (the ones a loader ignores filled in)."""
    row = {
        "message_id": mid,
        "parent_id": parent,
        "user_id": f"user-{mid}",
        "created_date": "2023-02-05T10:00:00.000000+00:00",
        "text": text,
        "role": role,
        "lang": "en",
        "review_count": 3,
        "review_result": True,
        "deleted": False,
        "rank": 0 if role == "assistant" else None,
        "synthetic": False,
        "model_name": None,
        "detoxify": {name: 0.001 for name in OASST_FEATURES["detoxify"]},
        "message_tree_id": tree,
        "tree_state": "ready_for_export",
        "emojis": {"name": ["+1"], "count": [2]},
        "labels": {"name": ["spam"], "value": [0.0], "count": [3]},
    }
    return row | kw


#: The threads the good train rows give with ``lang="en"`` (best-ranked replies).
OASST_THREADS = [
    [
        ("prompter", "How do bees find their way home?"),
        ("assistant", "They remember landmarks and the position of the sun."),
        ("prompter", "And on a cloudy day?"),
        ("assistant", "They can still sense polarized light through thin clouds."),
    ],
    [("prompter", "Name a bird that cannot fly."), ("assistant", "The kiwi cannot fly.")],
]
OASST_BAD_TRAIN = 2  # a tree with a null text, a tree whose parent is missing


def oasst_rows(split: str) -> list[dict]:
    if split == "validation":
        return [
            oasst_message("v1", "prompter", None, "v1", "Is a tomato a fruit?"),
            oasst_message("v2", "assistant", "v1", "v1", "Yes, botanically it is a fruit."),
        ]
    return [
        oasst_message("t1", "prompter", None, "t1", OASST_THREADS[0][0][1]),
        oasst_message("t2", "assistant", "t1", "t1", OASST_THREADS[0][1][1]),
        oasst_message("t3", "assistant", "t1", "t1", "A worse answer.", rank=1),
        oasst_message("t4", "prompter", "t2", "t1", OASST_THREADS[0][2][1]),
        oasst_message("t5", "assistant", "t4", "t1", OASST_THREADS[0][3][1]),
        oasst_message("t6", "assistant", "t4", "t1", "Deleted.", deleted=True, rank=None),
        oasst_message("k1", "prompter", None, "k1", OASST_THREADS[1][0][1]),
        oasst_message("k2", "assistant", "k1", "k1", OASST_THREADS[1][1][1]),
        oasst_message("k3", "prompter", None, "k3", "Wie heißt du?", lang="de"),
        oasst_message("k4", "assistant", "k3", "k3", "Ich bin ein Modell.", lang="de"),
        # bad rows
        oasst_message("n1", "prompter", None, "n1", None),  # null text
        oasst_message("m2", "assistant", "gone", "m1", "An orphan reply."),  # missing parent
    ]


#: Good WebGLM rows per split; each train split also has the bad rows below.
WEBGLM_GOOD = {
    "train": [
        {
            "question": "Why do cats purr?",
            "answer": "Cats purr when content and also to calm themselves [1][2].",
            "references": [
                "Purring is a sign of contentment in cats.",
                "Cats also purr to soothe themselves when hurt.",
            ],
        },
        {
            "question": "How long do tortoises live?",
            "answer": "Many tortoises live longer than a century [1].",
            "references": ["Giant tortoises often live more than 100 years."],
        },
    ],
    "validation": [
        {
            "question": "What do pandas eat?",
            "answer": "Pandas eat mostly bamboo [1].",
            "references": ["Bamboo makes up almost all of a panda's diet."],
        }
    ],
    "test": [
        {
            "question": "Where do penguins live?",
            "answer": "Most penguins live in the southern hemisphere [1].",
            "references": ["Penguins are found almost only south of the equator."],
        }
    ],
}
WEBGLM_BAD = [
    {"question": "Why is snow white?", "answer": "It scatters light [1].", "references": []},
    {
        "question": "Why do owls hoot?",
        "answer": "To mark territory [3].",
        "references": ["Owls hoot to claim territory."],
    },
    {"question": "What is a newt?", "answer": None, "references": ["A small amphibian."]},
]

PHRASEBANK_GOOD = [
    ("Quarterly profit doubled from a year earlier .", 2),
    ("The company will hold its annual meeting in May .", 1),
    ("Net sales fell by a third .", 0),
    ("Operating loss widened to EUR 4 million .", 0),
    ("The plant employs 300 people .", 1),
]
PHRASEBANK_BAD = [(None, 1), ("Shares moved .", -1)]  # a null sentence, no label (-1)


def write_oasst1(root: Path) -> Path:
    folder = Path(root) / "oasst1"
    for split in ("train", "validation"):
        ds = datasets.Dataset.from_list(oasst_rows(split), features=OASST_FEATURES)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def write_webglm(root: Path) -> Path:
    folder = Path(root) / "webglm-qa"
    for split, rows in WEBGLM_GOOD.items():
        rows = rows[:1] + WEBGLM_BAD + rows[1:] if split == "train" else rows
        ds = datasets.Dataset.from_list(rows, features=WEBGLM_FEATURES)
        ds.to_json(str(folder / "data" / f"{split}.jsonl"), lines=True)
    return folder


def write_phrasebank(root: Path) -> Path:
    folder = Path(root) / "financial_phrasebank"
    rows = PHRASEBANK_GOOD[:2] + PHRASEBANK_BAD + PHRASEBANK_GOOD[2:]
    ds = datasets.Dataset.from_dict(
        {"sentence": [s for s, _ in rows], "label": [lab for _, lab in rows]},
        features=PHRASEBANK_FEATURES,
    )
    ds.to_parquet(str(folder / "sentences_50agree" / "train" / "0000.parquet"))
    return folder


def write_all(root: Path) -> dict[str, Path]:
    return {
        "oasst1": write_oasst1(root),
        "webglm": write_webglm(root),
        "financial_phrasebank": write_phrasebank(root),
    }


if __name__ == "__main__":
    for name, folder in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
        print(name, folder)
