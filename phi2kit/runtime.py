"""Where a notebook's outputs go: ``.``, or on Colab with ``USE_DRIVE = True`` Google Drive's
``MyDrive/phi2kit/`` (Colab recycles ``/content``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")
#: Outputs on Drive go under this folder: ``MyDrive/phi2kit/outputs/...``.
DRIVE_ROOT = DRIVE_MOUNT / "MyDrive" / "phi2kit"


def on_colab() -> bool:
    """Running in a Google Colab kernel."""
    return sys.modules.get("google.colab") is not None


def on_kaggle() -> bool:
    """Running in a Kaggle notebook (Kaggle sets ``KAGGLE_KERNEL_RUN_TYPE``)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def outputs_root(use_drive: bool = False) -> Path:
    """The folder relative output paths start from: ``.``, or with ``use_drive`` Drive's
    (mounted once per session); elsewhere than Colab ``use_drive`` raises, saying what to do."""
    if not use_drive:
        return Path(".")
    if not on_colab():
        kaggle = "on Kaggle, /kaggle/working is kept when you save a version; " * on_kaggle()
        raise RuntimeError("USE_DRIVE = True needs Google Colab (it mounts Google Drive). "
                           f"{kaggle}set USE_DRIVE = False, and OUTPUT_DIR to any folder you keep.")
    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        from google.colab import drive  # only importable on Colab

        drive.mount(str(DRIVE_MOUNT))
    DRIVE_ROOT.mkdir(parents=True, exist_ok=True)
    return DRIVE_ROOT
