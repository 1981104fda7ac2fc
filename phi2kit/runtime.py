"""Where a notebook runs (Colab, Kaggle, elsewhere) and where its outputs go.

Colab recycles runtimes: a session that idles or runs too long is taken back, with every
file under ``/content``. With ``USE_DRIVE = True`` a notebook keeps its outputs (adapters,
checkpoints, metrics) on Google Drive instead, in ``MyDrive/phi2kit/``; Drive is mounted
only then (Colab asks for permission once per session). Relative paths in the notebooks'
parameters (``outputs/02_sentiment``, ...) are then read and written under that folder,
so notebooks 03 and 05 find what 02 and 04 saved there, in a later session too.

On Kaggle the working folder ``/kaggle/working`` is kept when you save a version of the
notebook; it has no Drive, and ``USE_DRIVE`` there is an error, not a silent local folder.
"""

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
    """The folder that relative output paths are taken from: ``.``, or Drive's when asked.

    With ``use_drive`` on Colab, Google Drive is mounted (once per session) and
    ``MyDrive/phi2kit`` is created and returned. Elsewhere ``use_drive`` raises, naming
    what to do instead.
    """
    if not use_drive:
        return Path(".")
    if not on_colab():
        where = "on Kaggle, /kaggle/working is kept when you save a version" if on_kaggle() else ""
        raise RuntimeError(
            "USE_DRIVE = True needs Google Colab (it mounts Google Drive). "
            + (where + "; " if where else "")
            + "set USE_DRIVE = False, and OUTPUT_DIR to any folder you keep."
        )
    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        from google.colab import drive  # only importable on Colab

        drive.mount(str(DRIVE_MOUNT))
    DRIVE_ROOT.mkdir(parents=True, exist_ok=True)
    return DRIVE_ROOT
