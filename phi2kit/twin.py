"""What the ``t4-cpu`` twin of a T4 run needs and a T4 does not; on a GPU both do nothing."""

from __future__ import annotations

import torch
from torch import nn


def keep_nf4_layout_on_cpu(model: nn.Module) -> int:
    """Stop bitsandbytes 0.50 repacking nf4 weights at the first no-grad eval forward on AVX512-BF16
    CPUs (training then fails: "a view of a leaf Variable ..."); return the modules touched."""
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def cpu_fp16_amp(trainer) -> bool:
    """Make ``fp16=True`` on a CPU do what it does on a T4 (accelerate 1.15 silently trains in fp32
    there): fp16 autocast and a grad scaler. Call before ``trainer.train()``; returns whether it
    switched them on."""
    acc = trainer.accelerator
    if not trainer.args.fp16 or acc.device.type != "cpu" or acc.native_amp:
        return False
    acc.native_amp = True  # accelerate.prepare() wraps forward in torch.autocast(fp16)
    acc.scaler = torch.amp.GradScaler("cpu")  # backward, unscale, skip steps with inf grads
    return True
