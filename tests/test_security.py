"""Repository-wide scans: no remote code, safetensors only, no secrets."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [
    p
    for p in ROOT.rglob("*")
    if p.is_file()
    and p.suffix in {".py", ".ipynb", ".md", ".yml", ".yaml", ".toml", ".json", ".txt", ".cfg"}
    and ".git" not in p.parts
    and "runs" not in p.parts
]

# Shapes of access tokens: Hugging Face, OpenAI-style, GitHub, AWS.
TOKEN_SHAPES = re.compile(
    r"hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{32,}|gh[pousr]_[A-Za-z0-9]{36}"
    r"|AKIA[0-9A-Z]{16}"
)


def test_files_were_scanned():
    assert len(SCANNED) > 20


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
