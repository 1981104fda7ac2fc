"""The performance report's table and JSON (``phi2kit bench``), from the results of
``bench_train.run()`` (P1) and ``bench_eval.run()`` (P2)."""

from __future__ import annotations


def summary_table(p1: dict, p2: dict, notebooks: dict[str, str] | None = None) -> str:
    """The performance report as one markdown table: P1, P2 and notebook wall times.

    The peer column is what a user would run without phi2kit: trl's ``SFTTrainer`` with its
    defaults (P1) and batched, left-padded ``generate`` (P2).
    """
    lo, hi = p1["vs_trl_default_range"]
    glo, ghi = p2["ratio_vs_batched_generate_range"]
    slo, shi = p2["ratio_range"]
    lines = [
        "| measurement | seed pipeline | peer | phi2kit | phi2kit / seed | phi2kit / peer |",
        "|---|---:|---:|---:|---:|---:|",
        f"| P1 training: useful tokens/s (peer: trl `SFTTrainer` defaults) "
        f"| {p1['seed_useful_tokens_per_s']:,.0f} | {p1['trl_default_useful_tokens_per_s']:,.0f} "
        f"| {p1['phi2kit_useful_tokens_per_s']:,.0f} | {p1['useful_tokens_per_s_ratio']:.1f}x "
        f"| {p1['vs_trl_default']:.2f}x ({lo:.2f}-{hi:.2f}) |",
        f"| P1 useful-token fraction | {p1['seed_useful_fraction']:.2f} "
        f"| {p1['trl_default_useful_fraction']:.2f} | {p1['phi2kit_useful_fraction']:.2f} | | |",
        f"| P1 loss positions on padding | {p1['seed_loss_positions_on_pad']:,} "
        f"| {p1['trl_default_loss_positions_on_pad']:,} "
        f"| {p1['phi2kit_loss_positions_on_pad']:,} | | |",
        f"| P1 reference: padding-free useful tokens/s (fraction 1.00) | | "
        f"{p1['padding_free_useful_tokens_per_s']:,.0f} | "
        f"{p1['phi2kit_useful_tokens_per_s']:,.0f} | | {p1['vs_padding_free']:.2f}x |",
        f"| P2 evaluation: examples/s (peer: batched `generate`) "
        f"| {p2['seed_loop_examples_per_s']:,.0f} | {p2['batched_generate_examples_per_s']:,.0f} "
        f"| {p2['scoring_examples_per_s']:,.0f} | {p2['ratio']:.1f}x ({slo:.1f}-{shi:.1f}) "
        f"| {p2['ratio_vs_batched_generate']:.1f}x ({glo:.1f}-{ghi:.1f}) |",
        f"| P2 accuracy | {p2['seed_loop_accuracy']:.3f} | {p2['batched_generate_accuracy']:.3f} "
        f"| {p2['scoring_accuracy']:.3f} | | |",
    ]
    for name, shown in (notebooks or {}).items():
        lines.append(f"| wall time, {name} (tiny) | | | {shown} | | |")
    return "\n".join(lines)


def summary_json(p1: dict, p2: dict) -> dict:
    """The headline ratios and accuracies of one run (``phi2kit bench --json``).

    Ratios are phi2kit over the peer (> 1: phi2kit is faster); ``*_range`` are the
    lowest and highest round-by-round ratios behind the median.
    """
    return {
        "p1_vs_seed": p1["useful_tokens_per_s_ratio"],
        "p1_vs_trl_default": p1["vs_trl_default"],
        "p1_vs_trl_default_range": list(p1["vs_trl_default_range"]),
        "p1_vs_padding_free": p1["vs_padding_free"],
        "p1_useful_fraction": p1["phi2kit_useful_fraction"],
        "p1_useful_fraction_trl_default": p1["trl_default_useful_fraction"],
        "p1_useful_fraction_seed": p1["seed_useful_fraction"],
        "p1_loss_positions_on_pad": p1["phi2kit_loss_positions_on_pad"],
        "p1_repeats": p1["repeats"],
        "p2_vs_seed_loop": p2["ratio"],
        "p2_vs_seed_loop_range": list(p2["ratio_range"]),
        "p2_vs_batched_generate": p2["ratio_vs_batched_generate"],
        "p2_vs_batched_generate_range": list(p2["ratio_vs_batched_generate_range"]),
        "p2_accuracy_phi2kit": p2["scoring_accuracy"],
        "p2_accuracy_seed_loop": p2["seed_loop_accuracy"],
        "p2_accuracy_batched_generate": p2["batched_generate_accuracy"],
        "p2_repeats": p2["repeats"],
        "p2_goal_met": p2["goal_met"],
    }
