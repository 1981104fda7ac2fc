"""Where outputs go on Colab (Google Drive, mounted only when asked), Kaggle and elsewhere."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from phi2kit import runtime


@pytest.fixture()
def fake_colab(monkeypatch, tmp_path):
    """A stand-in ``google.colab`` whose ``drive.mount`` creates MyDrive under tmp_path."""
    mounts = []

    def mount(where):
        mounts.append(where)
        (Path(where) / "MyDrive").mkdir(parents=True)

    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(runtime, "DRIVE_MOUNT", tmp_path / "drive")
    monkeypatch.setattr(runtime, "DRIVE_ROOT", tmp_path / "drive" / "MyDrive" / "phi2kit")
    return mounts


def test_local_outputs_unless_drive_is_asked_for(fake_colab):
    assert runtime.on_colab()
    assert runtime.outputs_root(False) == Path(".")
    assert fake_colab == []  # Drive is not mounted when not asked for


def test_drive_is_mounted_once_and_holds_the_outputs(fake_colab, tmp_path):
    root = runtime.outputs_root(True)
    assert root == tmp_path / "drive" / "MyDrive" / "phi2kit" and root.is_dir()
    assert runtime.outputs_root(True) == root
    assert fake_colab == [str(tmp_path / "drive")]  # the second call found it mounted
    assert root / "outputs/04_webglm" == tmp_path / "drive/MyDrive/phi2kit/outputs/04_webglm"
    assert root / "/data/mine" == Path("/data/mine")  # an absolute OUTPUT_DIR stays


def test_drive_elsewhere_is_a_clear_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    with pytest.raises(RuntimeError, match="needs Google Colab") as err:
        runtime.outputs_root(True)
    assert "Kaggle" not in str(err.value)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert runtime.on_kaggle()
    with pytest.raises(RuntimeError, match="/kaggle/working is kept"):
        runtime.outputs_root(True)
