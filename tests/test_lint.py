import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "phi2kit", "tests", "bench", "scripts", "examples", "exercises"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_merge_conflict_markers():
    """A merge left markers in a Markdown file once; nothing else would have noticed."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    marked = []
    for name in files.split():
        path = ROOT / name
        text_file = path.suffix in {".py", ".md", ".ipynb", ".toml", ".yml", ".txt"}
        if not text_file or not path.is_file():
            continue
        lines = path.read_text(errors="replace").splitlines()
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in lines):
            marked.append(name)
    assert marked == []
