"""Real lengths, bounded memory: notebooks 04 and 06 on exports with very long examples.

Real OASST threads can run to dozens of turns and WebGLM rows carry long references; an
uncapped prompt of tens of thousands of tokens makes eager attention allocate gigabytes
(issue 13 reports 8.2 GB for notebook 06 on the tiny model with a real OASST export).
Each test writes such an export, runs the notebook's own cells on it in a fresh process,
from the parameters to the base model's generation on the evaluation prompts, then one
evaluation forward pass, and checks that every prompt and every training example fits
``max_length`` and that the process's peak RSS stays under ``PEAK_RSS_MB``.

Before anything is generated, the run stops if a prompt is over ``max_length``, so a
regression fails here quickly instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

#: Peak RSS allowed for the whole run (Python, torch, the tiny model in nf4, the data, one
#: generation and one evaluation batch). Measured on 2 cores (2026-12): 0.6 GB for 06,
#: 0.6 GB for 04. Without the caps, 06 on threads of only 6 such turns (prompts of ~3,000
#: tokens, N_EVAL=4) peaked at 2.0 GB; on the 50-turn threads here its prompts reach
#: 15,600 tokens, and one attention matrix for a generation batch of 8 would take 31 GB.
PEAK_RSS_MB = 1200

TURNS, TURN_CHARS = 50, 2_000  # per OASST thread
SHORT_CHARS = 200  # every third exchange is short, so that its example fits the tiny budget
# per WebGLM row: about 19,750 tokens of references (uncapped, one attention matrix for a
# generation batch of 8 would take about 50 GB). Each re-fit tokenizes the whole prompt, so more
# references cost quadratically more CPU: 30 of them took 17 s longer and tested nothing more.
REFS, REF_CHARS = 12, 5_000

WORDS = "the otter swims in cold river water and eats fish near its den at night".split()


def long_text(seed: int, n_chars: int) -> str:
    words, out, size = WORDS, [], 0
    while size < n_chars:
        word = words[(seed * 7 + len(out) * 3) % len(words)]
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def write_oasst_export(path: Path, n_threads: int, turns: int = TURNS) -> Path:
    """An official-export ``trees.jsonl``: each tree one long thread (a single reply chain).

    Turns are ``TURN_CHARS`` long (about 640 tokens of the tiny tokenizer, over the tiny
    recipe's ``max_length`` of 256), except every third exchange, which is short: its
    example fits once the long earlier turns are dropped. So the run exercises both
    trimmed and left-out examples, over threads of some 25,000 tokens.
    """
    with path.open("w") as f:
        for t in range(n_threads):
            node = None
            for k in reversed(range(turns)):
                role = "prompter" if k % 2 == 0 else "assistant"
                node = {
                    "message_id": f"t{t}-m{k}",
                    "role": role,
                    "text": f"Turn {k} of thread {t}. "  # threads differ: a repeat is left out
                    + long_text(t + k, SHORT_CHARS if k % 6 in (4, 5) else TURN_CHARS),
                    "lang": "en",
                    "rank": 0 if role == "assistant" else None,
                    "deleted": False,
                    "review_result": True,
                    "replies": [node] if node else [],
                }
            tree = {"message_tree_id": f"t{t}", "tree_state": "ready_for_export", "prompt": node}
            f.write(json.dumps(tree) + "\n")
    return path


def write_webglm_export(folder: Path, n_train: int, n_validation: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_validation)):
        with (folder / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                refs = [long_text(i + r, REF_CHARS) for r in range(REFS)]
                row = {
                    "question": f"What does otter {i} eat?",
                    "answer": f"Otter {i} eats fish [1] near its den [2].",
                    "references": refs,
                }
                f.write(json.dumps(row) + "\n")
    return folder


# Run in the child after the data cell: every prompt and example fits, or stop right there.
CHECK = """
from phi2kit.models import load_tokenizer as _load_tokenizer

_tok, _max = _load_tokenizer(profile), recipe.max_length
_prompts = [len(_tok(p).input_ids) for p in eval_ds["prompt"]]
_examples = [len(_tok(r["prompt"] + r["completion"]).input_ids) + 1
             for ds in (train_ds, eval_ds) for r in ds]
_RESULT.update(max_length=_max, n_prompts=len(_prompts), n_train=len(train_ds),
               max_prompt_tokens=max(_prompts), max_example_tokens=max(_examples))
if max(_examples) > _max:
    print("PHI2KIT_RESULT", json.dumps(_RESULT)); sys.exit(3)
"""
# Run at the end: one evaluation batch (what trainer.evaluate computes) on the eval examples.
EVAL_BATCH = """
_model = globals().get("base_model") or globals()["model"]
tokenizer.padding_side = "right"
_rows = list(eval_ds)[:8]
_batch = tokenizer([r["prompt"] + r["completion"] + tokenizer.eos_token for r in _rows],
                   return_tensors="pt", padding=True)
with torch.no_grad():
    _loss = _model(**_batch, labels=_batch["input_ids"]).loss
_RESULT.update(eval_loss_finite=bool(torch.isfinite(_loss)))
"""


def run_cells(notebook: Path, until: str, check_after: str, params: dict, tmp_path: Path) -> dict:
    """Run ``notebook``'s code cells up to ``until`` (its id) in a fresh Python process.

    ``params`` are injected after the parameters cell, as papermill does. Returns what the
    child reports, with ``rss_mb``, the peak resident memory of the child.
    """
    nb = nbformat.read(notebook, as_version=4)
    parts = [
        "import json, resource, sys\nimport matplotlib\nmatplotlib.use('Agg')\n"
        "display = print\n_RESULT = {}\n"
    ]
    for cell in nb.cells:
        if cell.cell_type != "code" or "google.colab" in cell.source:
            continue
        parts.append(cell.source)
        if "parameters" in cell.metadata.get("tags", []):
            parts.append("\n".join(f"{k} = {v!r}" for k, v in params.items()))
        if cell.id == check_after:
            parts.append(CHECK)
        if cell.id == until:
            break
    else:
        raise AssertionError(f"no cell {until!r} in {notebook.name}")
    parts.append(EVAL_BATCH)
    parts.append(
        # VmHWM: this process's own peak (its address space is new at exec). ru_maxrss is not:
        # Linux carries the parent's peak across fork and exec, so a big pytest process
        # would be counted here.
        "try:\n"
        "    _hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
        "    _RESULT['rss_mb'] = int(_hwm.split()[1]) / 1024\n"
        "except OSError:\n"
        "    _RESULT['rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print('PHI2KIT_RESULT', json.dumps(_RESULT))"
    )
    script = tmp_path / "cells.py"
    script.write_text("\n\n".join(textwrap.dedent(p) for p in parts))
    env = dict(os.environ, PYTHONPATH=str(REPO), PHI2KIT_PROFILE="tiny", MPLBACKEND="Agg")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PHI2KIT_RESULT ")]
    assert lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1].split(" ", 1)[1])
    result["returncode"] = proc.returncode
    return result


def check_bounded(result: dict) -> None:
    assert result["max_example_tokens"] <= result["max_length"], result  # trl cuts nothing
    assert result["max_prompt_tokens"] <= result["max_length"], result
    assert result["returncode"] == 0, result
    assert result["eval_loss_finite"], result
    assert result["rss_mb"] < PEAK_RSS_MB, result


def test_notebook_06_on_very_long_threads_stays_bounded(tmp_path):
    # 16 test + 16 eval threads on the tiny profile; the rest train
    export = write_oasst_export(tmp_path / "long.trees.jsonl", n_threads=56)
    params = {"PROFILE": "tiny", "DATA_PATH": str(export), "MAX_NEW_TOKENS": 8}
    # cell-13 builds the splits; cell-18 is the baseline generation on the eval prompts
    result = run_cells(NOTEBOOKS / "06_chat_oasst1.ipynb", "cell-18", "cell-13", params, tmp_path)
    check_bounded(result)
    assert result["n_train"] > 50 and result["n_prompts"] >= 16  # one or more per eval thread


def test_notebook_04_on_very_long_references_stays_bounded(tmp_path):
    data = write_webglm_export(tmp_path / "webglm", n_train=8, n_validation=8)
    params = {"PROFILE": "tiny", "DATA_PATH": str(data), "MAX_NEW_TOKENS": 8}
    result = run_cells(NOTEBOOKS / "04_webglm_qlora.ipynb", "cell-13", "cell-11", params, tmp_path)
    check_bounded(result)
    assert (result["n_train"], result["n_prompts"]) == (8, 8)


@pytest.mark.parametrize("turns", [2, 7])
def test_export_writer_builds_one_long_thread_per_tree(tmp_path, turns):
    from phi2kit.data.oasst import load_oasst

    threads = load_oasst(write_oasst_export(tmp_path / "x.trees.jsonl", 3, turns=turns))
    assert [len(t) for t in threads] == [turns - turns % 2] * 3
    assert sum(len(text) for _, text in threads[0]) > (turns - 2) // 3 * 2 * TURN_CHARS
