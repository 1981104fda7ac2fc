"""Set up a Colab or Kaggle kernel for the course; every notebook's second cell runs this.

The cell clones the course to ``REPO`` (below) and runs this file *inside the kernel*
(``runpy.run_path``), so that it can see what the kernel has already imported. It

1. installs the course (``pip install REPO``: phi2kit with the pinned stack of
   ``pyproject.toml``, no extras), while the packages the kernel itself runs on stay exactly
   as the platform installed them (a pip constraint file);
2. on Kaggle (two T4s) makes the notebooks train on one GPU, as on Colab;
3. asks for a restart only when a package the kernel had already imported changed;
4. changes to ``REPO/notebooks``, where the data samples and earlier notebooks' outputs are.

Elsewhere (a laptop, CI) it does nothing: follow the README's set-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib.metadata import distributions, packages_distributions

# Packages the running kernel depends on: pip may not change them.
KERNEL = ["ipykernel", "ipython", "jupyter-client", "jupyter-core", "nbclient", "papermill",
          "pyzmq", "tornado", "traitlets"]


def platform() -> str | None:
    """``"kaggle"``, ``"colab"`` or None (anywhere else)."""
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
        return "kaggle"
    return "colab" if "google.colab" in sys.modules else None


def repo_dir() -> str:
    """The clone this file is in (the notebook's cell cloned it)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed() -> dict[str, str]:
    return {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}


def setup(repo: str, where: str) -> list[str]:
    """Install ``repo`` into this kernel; return the packages that changed."""
    if where == "kaggle":  # GPU T4 x2: the notebooks train on one T4, as on Colab
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    before = _installed()
    keep = os.path.join(tempfile.gettempdir(), "phi2kit-kernel-packages.txt")
    with open(keep, "w") as f:
        f.write("".join(f"{name}=={before[name]}\n" for name in KERNEL if name in before))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", keep, repo], check=True)
    changed = sorted(name for name, v in _installed().items() if before.get(name) != v)
    # A package this kernel has already imported keeps running its old code until a restart.
    imported = {d.lower().replace("_", "-") for module, dists in packages_distributions().items()
                if module in sys.modules for d in dists}
    stale = [name for name in changed if name in imported]
    if stale:
        raise RuntimeError(f"restart the session (Colab: Runtime > Restart session), then run all "
                           f"cells again: the set-up changed {stale} after the kernel had imported "
                           f"them")
    print(f"installed {len(changed)} new or changed packages; none was imported yet: "
          "no restart needed")
    os.chdir(f"{repo}/notebooks")  # data/ samples and earlier notebooks' outputs are found here
    return changed


if __name__ == "__main__":
    where = platform()
    if where is None:
        print("not on Colab or Kaggle: nothing to do (see the README's set-up)")
    else:
        setup(repo_dir(), where)
