"""Phi-2 at its real size as GGUF (lesson 07's writer): file sizes against the planner, and
CPU generation speed of llama.cpp against transformers, in one run.

    nice -n 10 python bench/gguf_real_size.py --snapshot ~/phi2-random   # full size (below)
    python bench/gguf_real_size.py --quick                               # 1/4 width, 2 layers

What it does, in order (each model is freed before the next is loaded):

1. **The merged model.** The random-weight Phi-2 snapshot of ``bench/phi2_real_size.py``
   (Phi-2's published config, 2,779,683,840 parameters, fp16, the tiny Phi's tokenizer; reused
   from ``--snapshot`` when it matches) stands for the merged model of notebook 05/07: a merged
   model is a plain ``PhiForCausalLM`` in fp16, which is what the snapshot is.
2. **GGUF files**, with lesson 07's code (``phi2kit_exercises.export``): ``write_gguf``
   writes F16 and Q8_0 (the ``gguf`` package, 0.19), and llama.cpp's own quantizer
   (``llama_cpp.llama_model_quantize``, as ``phi2kit_exercises.export.quantize_gguf`` calls
   it, here with ``nthread`` set to ``--threads``) makes Q4_K_M from the F16 file.
3. **Against the planner** (``phi2kit.plan.gguf``): every tensor's type read back from each file
   (``gguf.GGUFReader``) must be the one ``gguf_tensor_types`` predicts (exact: the Q4_K_M
   rule of which tensors get Q6_K, Q8_0 or Q5_0), the tensor bytes must equal ``tensors_gb``
   (exact), and the file size must be within 2 MB of ``disk_gb`` (0.12 % of the smallest file,
   Q4_K_M). The file also holds the tokenizer and alignment padding, which the planner counts as
   32 bytes per vocabulary entry (1.6 MB); this snapshot's tokenizer (2,048 tokens, the rest
   padded as ``[PADn]``) is not Phi-2's, whose 50,295 tokens and 50,000 merges take about 2 MB,
   so the tolerance is the size of the metadata the planner estimates.
4. **Speed.** The same merged model in transformers (fp32, ``generate`` greedy, KV cache) and
   in llama.cpp (``llama_cpp.Llama``, Q4_K_M and Q8_0, greedy: ``top_k=1``), same prompt token
   ids, ``--new-tokens`` new tokens each (EOS ignored: random weights), the same thread count
   (``--threads``). Reported: tokens per second over the whole call (prompt included; the
   prompt is short) and the ratio llama.cpp / transformers. Random weights cost the same
   arithmetic as trained ones, so the speed is Phi-2's; what the text says is noise.
   Peak RSS of each is shown next to the planner's ``ram_gb``.

Needs the ``export`` extra (``gguf`` and ``llama-cpp-python``). Full size: about 12 GB of free
RAM (the fp32 model; writing F16 holds the fp16 model and its F16 copy), 11 GB of disk for the
three files (plus the 5.6 GB snapshot). Measured figures are in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: phi2_real_size

from phi2_real_size import (  # noqa: E402
    GB,
    Row,
    build_snapshot,
    free,
    phase,
    phi2_config,
    print_table,
    snapshot_matches,  # noqa: E402
)

TYPES = ("F16", "Q8_0", "Q4_K_M")
#: the file size may differ from the planner's by the tokenizer's metadata: about 2 MB for Phi-2's
TOL_DISK_BYTES = 2e6
PROMPT = "### Human: How do I keep my tomato plants healthy in a hot summer?\n### Assistant:"


def read_types(path: Path) -> tuple[dict[str, str], int]:
    """``{name: type}`` and the tensor bytes of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return types, sum(int(t.n_bytes) for t in reader.tensors)


def quantize(src: Path, dst: Path, ftype: str, threads: int) -> Path:
    """llama.cpp's quantizer, as ``phi2kit_exercises.export.quantize_gguf`` calls it, on
    ``threads``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype}")
    return dst


def hf_speed(folder: Path, ids: list[int], new_tokens: int) -> dict:
    """transformers, fp32, greedy: seconds for ``new_tokens`` after the prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    with phase() as ph:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        model.eval()
        x = torch.tensor([ids])
        with torch.no_grad():
            model.generate(x, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
            start = time.perf_counter()
            out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)  # fmt: skip
            seconds = time.perf_counter() - start
    n = out.shape[1] - len(ids)
    del model
    free()
    return {"tokens": n, "seconds": seconds, "tok_s": n / seconds, "peak_rss": ph.peak_rss,
            "ids": out[0, len(ids):].tolist()}  # fmt: skip


def llama_speed(path: Path, ids: list[int], new_tokens: int, threads: int) -> dict:
    """llama.cpp through llama-cpp-python, greedy: seconds for ``new_tokens`` after the prompt."""
    import llama_cpp

    with phase() as ph:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads,
                              n_threads_batch=threads, verbose=False)  # fmt: skip
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):  # warm-up: one token
            break
        out: list[int] = []
        start = time.perf_counter()
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            out.append(token)
            if len(out) == new_tokens:
                break
        seconds = time.perf_counter() - start
    llm.close()
    del llm
    free()
    return {"tokens": len(out), "seconds": seconds, "tok_s": len(out) / seconds,
            "peak_rss": ph.peak_rss, "ids": out}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1/4 width, 2 layers, full vocabulary")
    p.add_argument("--snapshot", type=Path, default=None,
                   help="the random snapshot's folder, reused when it matches (default: a "
                   "temporary folder, removed at the end)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="where the GGUF files go (default: a temporary folder, removed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads for torch and llama.cpp")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per engine")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi2kit.footprint import count_parameters
    from phi2kit.logs import quiet
    from phi2kit.plan.gguf import gguf_footprint, gguf_tensor_types
    from phi2kit_exercises.export import write_gguf

    quiet()
    torch.set_num_threads(args.threads)
    cfg = phi2_config(args.quick)
    tmp = tempfile.TemporaryDirectory(prefix="gguf_real_size_")
    folder = args.snapshot or Path(tmp.name) / "snapshot"
    out = args.out or Path(tmp.name) / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"quick": args.quick, "torch": torch.__version__, "threads": args.threads,
                     "files": {}, "speed": {}}  # fmt: skip
    failures: list[str] = []
    try:
        size = "quick: 1/4 width, 2 of 32 layers" if args.quick else "full size"
        print(f"Phi-2 ({size}): {count_parameters(cfg):,} parameters, random weights; torch "
              f"{torch.__version__}, {args.threads} thread(s)")  # fmt: skip
        if not snapshot_matches(folder, cfg, args.seed):
            build_snapshot(folder, cfg, args.seed)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        paths = {q: out / f"model-{q.lower()}.gguf" for q in TYPES}

        with phase() as ph:  # lesson 07's writer: F16 and Q8_0 from the fp16 merged model
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float16)
            seconds = {}
            for q in ("F16", "Q8_0"):
                start = time.perf_counter()
                write_gguf(model, tokenizer, paths[q], qtype=q)
                seconds[q] = time.perf_counter() - start
                free()
            del model
            free()
        print(f"write_gguf: F16 {seconds['F16']:.0f} s, Q8_0 {seconds['Q8_0']:.0f} s, peak RSS "
              f"{ph.peak_rss / GB:.1f} GB")  # fmt: skip
        start = time.perf_counter()
        quantize(paths["F16"], paths["Q4_K_M"], "Q4_K_M", args.threads)
        seconds["Q4_K_M"] = time.perf_counter() - start
        print(f"llama_model_quantize F16 -> Q4_K_M: {seconds['Q4_K_M']:.0f} s")

        rows = []
        for q in TYPES:
            plan = gguf_footprint(q, cfg)
            types, tensor_bytes = read_types(paths[q])
            predicted = {name: kind for name, kind, _ in gguf_tensor_types(q, cfg)}
            wrong = sorted(n for n in predicted if types.get(n) != predicted[n])
            wrong += sorted(set(types) - set(predicted))
            disk = paths[q].stat().st_size
            rows += [
                Row(f"{q}: tensors whose type differs", len(wrong), 0, "count", 0),
                Row(f"{q}: tensor bytes", tensor_bytes, plan["tensors_gb"] * GB, "GB", 0),
                Row(f"{q}: file size", disk, plan["disk_gb"] * GB, "GB",
                    round(TOL_DISK_BYTES / (plan["disk_gb"] * GB), 5)),
            ]
            results["files"][q] = {"bytes": disk, "tensor_bytes": tensor_bytes, "planner": plan,
                                   "wrong_types": wrong[:10], "write_s": seconds[q]}  # fmt: skip
        print_table("GGUF files against phi2kit.plan.gguf", rows)
        failures += [r.name for r in rows if not r.ok]

        ids = tokenizer(PROMPT)["input_ids"]
        speed = {"transformers fp32": hf_speed(folder, ids, args.new_tokens)}
        for q in ("Q4_K_M", "Q8_0"):
            speed[f"llama.cpp {q}"] = llama_speed(paths[q], ids, args.new_tokens, args.threads)
        base = speed["transformers fp32"]["tok_s"]
        print(f"\n## CPU generation, greedy, {len(ids)}-token prompt + {args.new_tokens} new "
              f"tokens, {args.threads} thread(s), one run")  # fmt: skip
        for name, s in speed.items():
            q = name.split()[-1]
            ram = f", planner RAM {gguf_footprint(q, cfg)['ram_gb']:.2f} GB" if q in TYPES else ""
            print(f"  {name:18s} {s['tok_s']:7.2f} tokens/s ({s['tokens']} in {s['seconds']:.1f} s)"
                  f"  x{s['tok_s'] / base:5.2f}  peak RSS {s['peak_rss'] / GB:.1f} GB{ram}")
            results["speed"][name] = {k: v for k, v in s.items() if k != "ids"} | {
                "ratio": s["tok_s"] / base}
            if s["tokens"] != args.new_tokens:
                failures.append(f"{name}: {s['tokens']} tokens, not {args.new_tokens}")
    finally:
        tmp.cleanup()  # the snapshot and the files, unless --snapshot / --out put them elsewhere
    results["failures"] = failures
    results["wall_s"] = time.perf_counter() - t0
    print(f"\ntotal: {results['wall_s']:.0f} s wall")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n" + ("FAILED: " + "; ".join(failures) if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
