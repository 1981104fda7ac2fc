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
    assert "| 01_broken | failed |" in (tmp_path / "run" / "summary.md").read_text()


def test_plan_cli_prints_verdict(capsys):
    code = main(["plan", "--profile", "t4", "--task", "webglm"])
    out = capsys.readouterr().out
    assert code == 0 and "fits" in out and "total" in out
