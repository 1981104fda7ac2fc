"""CI runs every notebook under the T4's twin, ``t4-cpu``, as well as under ``tiny``.

nbmake (``pytest notebooks/``) executes the notebooks on the profile CI sets
(``PHI2KIT_PROFILE=tiny``). This test runs the whole course again, the way a user runs it
(``phi2kit course --profile t4-cpu``): fp16 AMP with a grad scaler, nf4 + double quant for
every recipe, gradient checkpointing, LoRA dropout and gradient accumulation. Each
notebook's learning checks have thresholds stated for this profile.

Two paths, as learners take them. 05, 07 and 08 each run in a folder of their own, as a
learner meets them who opens that one lesson on a fresh Colab runtime: they find no earlier
lesson's adapter and train their stand-ins. The others run in order in one folder (one xdist
worker: tests/conftest.py), as ``phi2kit course`` runs them: 09 reads 04's adapter. (09's
stand-in is 60 SFT steps, about 40 s on this profile; run alone it passed on 2026-12-07. On
2026-12-05, before the twin's fast fp16 products, the whole suite with every lesson alone took
1 min 22 s longer, all of .ci/run 1 min 26 s.)
nbmake's run on ``tiny`` takes the in-order path for every lesson.
"""

import json
from pathlib import Path

import pytest
from conftest import T4_CPU_ALONE as ALONE

from phi2kit.commands.course import DEFAULT_TIMEOUT, find_notebooks, run_course

ROOT = Path(__file__).resolve().parents[1]
TRAINING = {  # notebook -> a key metric that its summary row must show
    "02_sentiment_finetuning": "tuned_accuracy",
    "03_classification_head": "qlora_accuracy",
    "04_webglm_qlora": "answer_loss_after",
    "05_adapter_merging": "qlora_dequant_merge_max_abs",
    "06_chat_oasst1": "clean_stop_rate_tuned",
}


NOTEBOOKS = find_notebooks(ROOT / "notebooks")
STAND_IN = {  # what a lesson run alone prints when it trains its stand-in
    "05_adapter_merging": "training a stand-in for",
    "07_export_gguf": "training a stand-in",
    "08_preference_dpo": "trained 06's SFT for",
}
assert set(STAND_IN) == set(ALONE)


def printed(notebook: Path) -> str:
    """Every stream and text output of an executed notebook (not its sources)."""
    cells = json.loads(notebook.read_text())["cells"]
    texts = [o.get("text") or o.get("data", {}).get("text/plain", "")
             for c in cells for o in c.get("outputs", [])]  # fmt: skip
    return "".join("".join(t) if isinstance(t, list) else t for t in texts)


@pytest.fixture(scope="module")
def course_dirs(tmp_path_factory):
    """The run folder and working folder of the lessons that run in order."""
    base = tmp_path_factory.mktemp("t4-cpu-course")
    return base / "run", base / "work"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_passes_under_t4_cpu(notebook, course_dirs, tmp_path):
    alone = notebook.stem in ALONE  # its own outputs/: no earlier lesson's adapter
    out, work = (tmp_path / "run", tmp_path / "work") if alone else course_dirs
    # DEFAULT_TIMEOUT per cell (1800 s) holds on a busy CI machine: 600 s did not, under load
    (run,) = run_course("t4-cpu", out, [notebook], timeout=DEFAULT_TIMEOUT, workdir=work,
                        log=lambda _: None)  # fmt: skip
    assert run.status == "passed", run.error
    assert "(profile: t4-cpu)" in (out / "summary.md").read_text()
    if alone:
        assert STAND_IN[notebook.stem] in printed(out / notebook.name), "no stand-in trained"
    if notebook.stem in TRAINING:
        assert TRAINING[notebook.stem] in run.metrics, (notebook.stem, run.metrics)
