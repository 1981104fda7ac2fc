"""The planner for DPO (notebook 08): chosen and rejected in one batch, and the reference."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from phi2kit.footprint import GB, lora_parameters, weight_bytes
from phi2kit.plan import ALLOCATOR_SLACK, Estimate, _resolve, estimate


def estimate_dpo(model: Any, recipe: Any, reference: str = "adapter", precompute: bool = False,
                 **kw: Any) -> Estimate:  # fmt: skip
    """One DPO step: the policy on chosen + rejected, the ``reference`` (trl's frozen copy of the
    SFT ``adapter``, the ``base`` with adapters off, or a second ``model``) and its no-grad pass,
    which ``precompute`` runs before training."""
    est = estimate(model, replace(recipe, batch_size=2 * recipe.batch_size), _levers=False, **kw)
    cfg, p, s = kw.get("config") or _resolve(model)[0], est.parts, est.settings
    base = weight_bytes(cfg, s["dtype"], quantize_4bit=s["4-bit"]) / GB  # 08 never upcasts:
    p["overhead"] += ALLOCATOR_SLACK * (base - p["base weights"]) * (p["overhead"] > 0)
    p["base weights"] = base  # the SFT adapter is loaded onto the nf4 base as it is
    base2 = 0 if precompute else base
    p["reference"] = {"adapter": 4 * lora_parameters(cfg, recipe) / GB, "model": base2}.get(
        reference, 0.0)
    ref_pass = 2 * recipe.batch_size * recipe.max_length * cfg.vocab_size * 8 / GB
    p["reference pass"] = 0.0 if precompute else max(0.0, ref_pass - p["logits + grads"])
    p["overhead"] += ALLOCATOR_SLACK * (p["reference"] + p["reference pass"]) * (p["overhead"] > 0)
    s.update(batch=f"{recipe.batch_size} pairs", reference=reference, precompute=precompute)
    est.verdict = f"{'fits' if est.fits else 'does not fit'}: {est.total_gb:.2f} GB of "
    est.verdict += f"{est.device_gb:.1f} GB"
    return est
