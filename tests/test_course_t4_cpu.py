"""CI runs every notebook under the T4's twin, ``t4-cpu``, as well as under ``tiny``.

nbmake (``pytest notebooks/``) executes the notebooks on the profile CI sets
(``PHI2KIT_PROFILE=tiny``). This test runs the whole course again, the way a user runs it
(``phi2kit course --profile t4-cpu``): fp16 AMP with a grad scaler, nf4 + double quant for
every recipe, gradient checkpointing, LoRA dropout and gradient accumulation. Each
notebook's learning checks have thresholds stated for this profile.

Each lesson runs here in a folder of its own, as a learner meets it who opens that one lesson
on a fresh Colab runtime: 05, 07, 08 and 09 find no earlier lesson's adapter and train their
stand-ins. nbmake's run on ``tiny`` is the other path, every lesson in order in one folder, as
``phi2kit course`` runs them: there 05, 07, 08 and 09 read 02's, 04's and 06's adapters.
"""

from pathlib import Path

import pytest

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


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_passes_under_t4_cpu(notebook, tmp_path):
    out, work = tmp_path / "run", tmp_path / "work"  # its own outputs/: no earlier lesson's
    # DEFAULT_TIMEOUT per cell (1800 s) holds on a busy CI machine: 600 s did not, under load
    (run,) = run_course("t4-cpu", out, [notebook], timeout=DEFAULT_TIMEOUT, workdir=work,
                        log=lambda _: None)  # fmt: skip
    assert run.status == "passed", run.error
    assert "(profile: t4-cpu)" in (out / "summary.md").read_text()
    if notebook.stem in TRAINING:
        assert TRAINING[notebook.stem] in run.metrics, (notebook.stem, run.metrics)
