"""The GitHub workflows: CPU CI runs .ci/run; the GPU run is dispatched onto a `gpu` runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of transformers

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def _load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def _uses(job: dict) -> dict[str, dict]:
    return {s["uses"].split("@")[0]: s.get("with", {}) for s in job["steps"] if "uses" in s}


@pytest.fixture(scope="module")
def ci() -> dict:
    return _load("ci.yml")


@pytest.fixture(scope="module")
def gpu() -> dict:
    return _load("gpu.yml")


def test_ci_runs_ci_run_on_push_and_pull_requests(ci):
    assert {"push", "pull_request"} <= set(ci["on"])
    (job,) = ci["jobs"].values()
    assert "gpu" not in str(job["runs-on"])
    assert "bash .ci/run" in _runs(job).splitlines()
    assert "actions/checkout" in _uses(job)
    assert (WORKFLOWS.parents[1] / ".ci" / "run").exists()


def test_gpu_is_dispatched_with_a_profile_choice(gpu):
    assert set(gpu["on"]) == {"workflow_dispatch"}
    profile = gpu["on"]["workflow_dispatch"]["inputs"]["profile"]
    assert profile["type"] == "choice"
    assert profile["options"] == ["auto", "t4", "ampere"]
    assert profile["default"] == "auto"


def test_gpu_job_runs_on_the_gpu_runner(gpu):
    (job,) = gpu["jobs"].values()
    labels = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
    assert "self-hosted" in labels and "gpu" in labels


def test_gpu_job_installs_tests_notebooks_and_runs_the_course(gpu):
    (job,) = gpu["jobs"].values()
    runs = _runs(job)
    assert job["env"]["PHI2KIT_PROFILE"] == "${{ inputs.profile }}"
    assert 'pip install -q -e ".[dev,app,course,export]"' in runs  # course: papermill
    assert "pytest --nbmake notebooks/ -p no:cacheprovider" in runs
    assert 'phi2kit course --profile "$PHI2KIT_PROFILE" --out runs/gpu' in runs
    uses = _uses(job)
    assert uses["actions/cache"]["path"] == "~/.cache/huggingface"
    assert uses["actions/upload-artifact"]["path"] == "runs/gpu"


def test_hf_token_comes_from_secrets_and_is_never_echoed(gpu):
    (job,) = gpu["jobs"].values()
    assert job["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    text = (WORKFLOWS / "gpu.yml").read_text()
    assert text.count("secrets.HF_TOKEN") == 1  # only in env, never inside a script
    for line in _runs(job).splitlines():
        assert "HF_TOKEN" not in line, line
        assert "set -x" not in line and "printenv" not in line and line.strip() != "env"
