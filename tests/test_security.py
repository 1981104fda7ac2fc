"""Repository-wide scans: no remote code, safetensors only, no secrets."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".ipynb", ".md", ".yml", ".yaml", ".toml", ".json", ".txt", ".cfg"}


def tracked_files(root: Path = ROOT) -> list[Path]:
    """The files git tracks: what a commit holds, not a virtual environment or a run folder."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return [root / name for name in listed.split("\0") if name]


SCANNED = [p for p in tracked_files() if p.suffix in SUFFIXES and p.is_file()]

# Shapes of access tokens: Hugging Face, OpenAI-style, GitHub, AWS.
TOKEN_SHAPES = re.compile(
    r"hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{32,}|gh[pousr]_[A-Za-z0-9]{36}"
    r"|AKIA[0-9A-Z]{16}"
)


def test_files_were_scanned():
    assert len(SCANNED) > 20
    names = {str(p.relative_to(ROOT)) for p in SCANNED}
    assert {"phi2kit/models.py", "README.md", "notebooks/06_chat_oasst1.ipynb"} <= names


def test_untracked_files_are_not_scanned(tmp_path):
    # A virtual environment inside the clone (the README's .venv) holds third-party sources
    # with `trust_remote_code=` and token-shaped test strings: they are not the project's.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "kept.py").write_text("x = 1\n")
    (tmp_path / ".venv").mkdir()
    remote = "trust_remote_code" + "=True"  # built here, so this file holds no such call
    (tmp_path / ".venv" / "site.py").write_text(f"from_pretrained({remote})\n")
    subprocess.run(["git", "add", "kept.py"], cwd=tmp_path, check=True)
    assert tracked_files(tmp_path) == [tmp_path / "kept.py"]


def test_no_trust_remote_code_argument():
    pattern = re.compile(r"trust_remote_code\s*[=:]|\"trust_remote_code\"\s*:")
    hits = [
        str(p.relative_to(ROOT))
        for p in SCANNED
        if p.name != "test_security.py" and pattern.search(p.read_text(errors="ignore"))
    ]
    assert hits == []


def test_no_pickle_weight_loading():
    pattern = re.compile(
        r"use_safetensors\s*=\s*False|safe_serialization\s*=\s*False"
        r"|torch\.load\(|pytorch_model\.bin"
    )
    hits = [
        str(p.relative_to(ROOT))
        for p in SCANNED
        if p.suffix in {".py", ".ipynb"}
        and p.name != "test_security.py"
        and pattern.search(p.read_text(errors="ignore"))
    ]
    assert hits == []


def test_no_access_tokens_committed():
    hits = [
        str(p.relative_to(ROOT))
        for p in SCANNED
        if TOKEN_SHAPES.search(p.read_text(errors="ignore"))
    ]
    assert hits == []


def test_token_pattern_can_fail():
    assert TOKEN_SHAPES.search("token = 'hf_" + "a1B2" * 9 + "'")
