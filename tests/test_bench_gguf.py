"""bench/gguf_real_size.py in ``--quick`` mode: lesson 07's GGUF files of a shrunken Phi-2
(1/4 width, 2 layers, Phi-2's vocabulary) against ``phi2kit.plan.gguf``, and the speed table."""

import json
import subprocess
import sys

import pytest

from phi2kit.commands.bench import bench_dir, load_script

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_quick") / "snapshot"


@pytest.fixture(scope="module")
def quick(snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_quick_json") / "result.json"
    cmd = [sys.executable, str(bench_dir() / "gguf_real_size.py"), "--quick", "--snapshot",
           str(snapshot), "--json", str(out), "--new-tokens", "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, json.loads(out.read_text()) if out.exists() else {}


def test_quick_run_passes(quick):
    proc, result = quick
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert result["failures"] == [] and "all checks passed" in proc.stdout
    assert set(result["files"]) == {"F16", "Q8_0", "Q4_K_M"}


def test_files_match_the_planner_and_shrink_by_type(quick):
    _, result = quick
    files = result["files"]
    for q, f in files.items():
        assert f["wrong_types"] == [], q
        assert f["tensor_bytes"] == round(f["planner"]["tensors_gb"] * 1e9), q
    assert files["F16"]["bytes"] > files["Q8_0"]["bytes"] > files["Q4_K_M"]["bytes"]


def test_speed_is_measured_for_each_engine(quick):
    _, result = quick
    speed = result["speed"]
    assert set(speed) == {"transformers fp32", "llama.cpp Q4_K_M", "llama.cpp Q8_0"}
    assert all(s["tokens"] == 4 and s["tok_s"] > 0 for s in speed.values())
    assert speed["transformers fp32"]["ratio"] == 1.0


def test_a_wrong_tensor_type_fails(snapshot, monkeypatch, capsys, tmp_path):
    """The planner predicting Q4_K for the output matrix of Q4_K_M (llama.cpp writes Q6_K, or
    Q8_0 where rows are not a multiple of 256): exit code 1, the type check named."""
    from phi2kit.plan import gguf

    original = gguf.gguf_tensor_types

    def wrong(qtype, config=None):
        types = original(qtype, config)
        return [(n, "Q4_K" if n == "output.weight" and qtype == "Q4_K_M" else t, c)
                for n, t, c in types]  # fmt: skip

    monkeypatch.setattr(gguf, "gguf_tensor_types", wrong)
    bench = load_script("gguf_real_size")
    code = bench.main(["--quick", "--snapshot", str(snapshot), "--out", str(tmp_path),
                       "--new-tokens", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "Q4_K_M: tensors whose type differs" in out.split("FAILED:")[1]
