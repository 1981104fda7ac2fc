"""The command-line layer; the library never imports it (``tests/test_layout.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phi2kit.profiles import PROFILES


def add_profile_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """The one ``--profile`` flag: a name from :data:`phi2kit.profiles.PROFILES`, or ``auto``."""
    names = [*PROFILES, "auto"]
    parser.add_argument("--profile", default=default, choices=names,
                        help=f"{', '.join(names)} (default {default}; auto reads "
                        "PHI2KIT_PROFILE, then the GPU)")  # fmt: skip


def fail(command: str, message: str) -> int:
    """Print ``phi2kit COMMAND: error: MESSAGE`` on stderr; return exit code 2."""
    print(f"phi2kit {command}: error: {message}", file=sys.stderr)
    return 2


def folder_error(flag: str, value: str | Path, fix: str, marker: str) -> str | None:
    """``FLAG VALUE: a file; ...`` or ``FLAG VALUE: no such folder; FIX``; None for a folder.
    A file beside ``marker`` (e.g. ``adapter_config.json``) names its folder as the fix."""
    folder = Path(value)
    if folder.is_file() and (folder.parent / marker).is_file():
        return f"{flag} {value}: a file; pass the folder that holds it, {flag} {folder.parent}"
    if folder.is_file():
        return f"{flag} {value}: a file, not a folder; {fix}"
    if not folder.is_dir():
        return f"{flag} {value}: no such folder; {fix}"
    return None


def it_holds(folder: Path, skip: Path | None = None) -> str | None:
    """``it holds a, b, c, ...`` (the first three names, sorted) for a folder that is not
    empty, leaving ``skip`` out (e.g. an empty checkpoints folder); None for an empty one."""
    held = sorted(p.name for p in folder.iterdir() if p != skip)
    return f"it holds {', '.join(held[:3])}{', ...' * (len(held) > 3)}" if held else None


def adapter_error(adapter: str | Path, fix: str) -> str | None:
    """What is wrong with ``--adapter`` as a causal-LM adapter folder, ending in ``fix``; or
    None. Checked before any model loads (chat, app, train dpo/grpo)."""
    folder = Path(adapter)
    config = folder / "adapter_config.json"
    inner = folder / "adapter" / "adapter_config.json"  # a `phi2kit train` run folder
    if problem := folder_error("--adapter", adapter, fix, "adapter_config.json"):
        return problem
    if inner.is_file() and not config.is_file():
        return f"--adapter {adapter}: a run folder; pass its adapter, --adapter {inner.parent}"
    if not config.is_file():
        return f"--adapter {adapter}: no adapter_config.json in it; {fix}"
    task = json.loads(config.read_text()).get("task_type")
    if task not in (None, "CAUSAL_LM"):  # notebook 03's classifier: SEQ_CLS
        return (f"--adapter {adapter}: a {task} adapter (a classifier, such as notebook 03's) "
                f"scores labels and cannot chat or write (that takes task_type CAUSAL_LM); {fix}")
    return None
