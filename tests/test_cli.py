import subprocess
import sys

import pytest

from phi2kit.commands.main import main, make_parser


def _subcommands() -> list[str]:
    parser = make_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_expected_subcommands():
    assert {"course", "plan"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_help_works(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: phi2kit " + command in capsys.readouterr().out


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "phi2kit.commands.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "course" in out


def test_help_of_every_command_loads_no_torch():
    """``--help`` answers at once: no command imports torch (or transformers) to say its usage."""
    code = ("import sys\nfrom phi2kit.commands.main import main\n"
            f"for command in {_subcommands()!r}:\n"
            "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "papermill", "gradio")


@pytest.mark.parametrize(("argv", "loaded"), [
    (["train", "grpo", "--profile", "tiny", "--adapter", "NOPE"], ["torch"]),
    (["train", "sentiment", "--profile", "tiny", "--data", "NOPE/x.csv"], ["torch"]),
    (["app", "--profile", "tiny", "--adapter", "NOPE"], []),
    (["course", "--notebooks", "NOPE"], []),
])  # fmt: skip
def test_a_wrong_path_is_said_before_the_libraries_load(argv, loaded, tmp_path):
    """A wrong path is answered at once, before the libraries load: ``train`` has imported
    torch only (to leave its settings as they were), and not torch's compiler either."""
    argv = [a.replace("NOPE", str(tmp_path / "nope")) for a in argv]
    code = ("import sys\nfrom phi2kit.commands.main import main\n"
            f"code = main({argv!r})\n"
            f"print(code, sorted(m for m in {(*HEAVY, 'torch._inductor')!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "no such" in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == f"2 {loaded}", out.stdout


# A real course run (relative --out, metrics in summary.md): tests/test_course.py.


def test_course_reports_a_failing_notebook(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("PROFILE = 'auto'"), new_code_cell("1 / 0")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    folder = tmp_path / "nbs"
    folder.mkdir()
    nbformat.write(nb, folder / "01_broken.ipynb")
    code = main(
        ["course", "--profile", "tiny", "--notebooks", str(folder), "--out", str(tmp_path / "run")]
    )
    assert code == 1
    row = next(ln for ln in (tmp_path / "run" / "summary.md").read_text().splitlines()
               if ln.startswith("| 01_broken |"))  # fmt: skip
    assert row.startswith("| 01_broken | failed |")
    # the notebook, the cell (from 1, as a reader counts; first line), the error: not '-----'
    assert "01_broken.ipynb, cell 2 ('1 / 0'): ZeroDivisionError: division by zero" in row


def _notebook(folder, name: str, *sources: str):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("PROFILE = 'auto'"), *map(new_code_cell, sources)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    folder.mkdir(exist_ok=True)
    nbformat.write(nb, folder / name)


def test_course_says_which_cell_timed_out_and_how_to_raise_the_limit(tmp_path, capsys):
    _notebook(tmp_path / "nbs", "01_slow.ipynb", "x = 1", "import time\ntime.sleep(120)")
    argv = ["course", "--profile", "tiny", "--notebooks", str(tmp_path / "nbs")]
    assert main([*argv, "--out", str(tmp_path / "run"), "--timeout", "3"]) == 1
    captured = capsys.readouterr()
    said = "01_slow.ipynb, cell 3 ('import time'): timed out: the cell ran past the limit of 3 s"
    assert said in (tmp_path / "run" / "summary.md").read_text()
    assert said in captured.out and "raise it with --timeout 1800" in captured.out  # the default
    assert "IPKernelApp" not in captured.err  # the kernel's own log stays out of the shell


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--notebooks", "{tmp}/missing"], "--notebooks {tmp}/missing: no such folder"),
        (["--notebooks", "{tmp}"], "--notebooks {tmp}: no NN_*.ipynb notebooks in it"),
        (["--only", "09"], "--only 09: no such notebook; the numbers are 01 02"),
        (["--timeout", "0"], "--timeout 0: must be positive"),
        (["--only", "01", "--out", "{tmp}/mine"], "--out {tmp}/mine: not empty (it holds "
         "notes.md): pass a new or empty folder"),
    ],
)
def test_course_refuses_bad_input_in_one_line(argv, said, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("mine")  # never overwritten
    if "--only" in argv:
        _notebook(tmp_path / "nbs", "01_a.ipynb")
        _notebook(tmp_path / "nbs", "02_b.ipynb")
        argv = [*argv, "--notebooks", str(tmp_path / "nbs")]
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = tmp_path / "run"
    assert main(["course", "--profile", "tiny", "--out", str(out), *argv]) == 2  # last --out wins
    err = capsys.readouterr().err
    assert f"phi2kit course: error: {said.format(tmp=tmp_path)}" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert (tmp_path / "mine" / "notes.md").read_text() == "mine"


def test_course_only_takes_1_for_01(tmp_path):
    from phi2kit.commands.course import select_notebooks

    paths = [tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"]
    assert select_notebooks(paths, ["1"]) == paths[:1]
    assert select_notebooks(paths, None) == paths


def test_gpu_profile_on_a_cpu_says_which_flag_to_pass(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["course", "--profile", "t4", "--only", "01", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phi2kit course: error: profile 't4' needs a CUDA GPU")
    assert "pass --profile tiny" in err and "PROFILE=" not in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["plan", "--profile", "auto"], ["course", "--only", "01"]])
def test_unknown_profile_in_the_environment(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PHI2KIT_PROFILE", "bogus")
    assert main([*command, *(["--out", str(tmp_path)] if command[0] == "course" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"phi2kit {command[0]}: error: unknown profile 'bogus' in PHI2KIT_PROFILE; choose one "
        "of 'tiny', 't4-cpu', 't4', 'ampere', 'auto' (or unset PHI2KIT_PROFILE)"
    )


def test_exercises_alone_lists_them(capsys):
    assert main(["exercises"]) == 0
    listed = capsys.readouterr().out
    assert main(["exercises", "list"]) == 0
    assert listed == capsys.readouterr().out and "02_b" in listed


def test_exercises_check_refuses_a_file_that_is_not_a_notebook(tmp_path, capsys):
    bad = tmp_path / "notes.ipynb"
    bad.write_text("my answers\n")
    assert main(["exercises", "check", "02_b", str(bad)]) == 2
    said = capsys.readouterr().out.strip()
    assert said.startswith(f"phi2kit exercises: error: {bad}: not a Jupyter notebook")
    assert "pass the .ipynb you worked in" in said and len(said.splitlines()) == 1


@pytest.mark.parametrize(
    "command", ["phi2kit", "course", "plan", "train", "bench", "exercises", "chat", "app"]
)
def test_help_has_no_raw_markup(command, capsys):
    with pytest.raises(SystemExit):
        main(["--help"] if command == "phi2kit" else [command, "--help"])
    out = capsys.readouterr().out
    for markup in ("``", ":func:", ":mod:", "**"):
        assert markup not in out, (command, markup)


def test_train_help_explains_data_labels_and_set_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for said in ("--data PATH", "data formats (--data PATH):", "all-data.csv",
                 "text (or sentence", "--labels A,B,...", "--set keys:", "lora_r", "n_eval",
                 "*.trees.jsonl"):  # fmt: skip
        assert said in out, said


def test_summary_keeps_significant_figures(tmp_path, monkeypatch):
    from phi2kit.commands.course import NotebookRun, summary_markdown
    from phi2kit.metrics import METRICS_ENV, record_metrics

    monkeypatch.setenv(METRICS_ENV, str(tmp_path))
    kept = record_metrics("05_x", {"merge_max_abs": 7.0123e-6, "other": 1.5e-5, "acc": 0.81234})
    assert kept == {"merge_max_abs": 7.012e-6, "other": 1.5e-5, "acc": 0.8123}
    row = summary_markdown([NotebookRun("05_x", "passed", 3.0, kept)], "tiny").splitlines()[4]
    assert "merge_max_abs=7.012e-06, other=1.5e-05, acc=0.8123" in row


def test_summary_says_its_timings_depend_on_the_machines_load():
    from phi2kit.commands.course import NotebookRun, summary_markdown

    text = summary_markdown([NotebookRun("01_x", "passed", 3.0, {"batch_speedup": 2.9})], "tiny")
    assert text.index("batch_speedup=2.9") < text.index("this machine's at its load")
    assert "07's `tokens_per_s_*`" in text and "load average" not in text
    loaded = summary_markdown([NotebookRun("01_x", "passed", 3.0, {})], "tiny", load=1.83)
    assert "at its load during the run (load average 1.8 at the end, on " in loaded, loaded


def test_summary_names_the_lessons_that_trained_a_stand_in():
    from phi2kit.commands.course import NotebookRun, summary_markdown

    runs = [NotebookRun("05_x", "passed", 3.0, {"stand_in": "route (a)", "err": 1e-6}),
            NotebookRun("08_x", "passed", 3.0, {"stand_in": True}),
            NotebookRun("09_x", "passed", 3.0, {"stand_in": False}),
            NotebookRun("06_x", "failed", 3.0, {})]  # fmt: skip
    text = summary_markdown(runs, "tiny")
    assert "\nStand-ins (`stand_in`): 05_x (route (a)), 08_x. Each trained" in text, text
    assert "stand-in" not in summary_markdown(runs[2:], "tiny")  # the earlier lessons' adapters


def test_plan_cli_prints_verdict(capsys):
    code = main(["plan", "--profile", "t4", "--task", "webglm"])
    out = capsys.readouterr().out
    assert code == 0 and "fits" in out and "total" in out


def test_plan_no_4bit_gives_lesson_03s_peak_in_the_course_table(capsys):
    """The README's 7.8 GB for 03 is its LoRA run on the fp16 base: ``--no-4bit`` shows it;
    the classifier recipe's default (QLoRA) is lower."""
    import re

    from phi2kit.plan.course import course_rows

    def total(*flags: str) -> float:
        assert main(["plan", "--task", "classifier", *flags]) == 0
        return float(re.search(r"^total\s+([\d.]+)", capsys.readouterr().out, re.M)[1])

    peak_03 = dict((row[0], row[3]) for row in course_rows())["03_classification_head"]
    assert f"{total('--no-4bit'):.1f}" == peak_03
    assert total() < total("--no-4bit") - 2


def test_plan_help_says_what_its_exit_codes_mean(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert ("Exit code: 0 when it fits, 1 when it does not (a lever is named), 2 for a bad option "
            "or a --device-gb too small for any setting.") in said
