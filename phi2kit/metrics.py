"""A notebook's key numbers, for the ``phi2kit course`` summary (every notebook's last cell)."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_ENV = "PHI2KIT_METRICS_DIR"


def record_metrics(notebook: str, metrics: dict) -> dict:
    """Rounded and returned; saved as ``<PHI2KIT_METRICS_DIR>/<notebook>.json`` when it is set."""
    # 4 significant figures, not 4 decimals: a merge error of 7e-6 must not read 0.0
    clean = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in metrics.items()}
    folder = os.environ.get(METRICS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{notebook}.json").write_text(json.dumps(clean, indent=2) + "\n")
    return clean
