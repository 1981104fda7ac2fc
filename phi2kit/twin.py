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


#: The matrix products whose fp16 kernels torch runs as reference loops on a CPU without
#: AVX512-FP16: on this project's 2-core AMD EPYC, 512x256 @ 256x1024 took 256 ms in fp16 and
#: 2.8 ms in fp32 (one thread, torch 2.13); the tiny model's forward and backward took 9x as
#: long under fp16 autocast as in fp32. (addbmm is on autocast's fp16 list too.)
_PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "addbmm")
_registered = None  # the torch.library registration, kept alive: dropping it undoes it


def _product(name: str):
    stock = getattr(torch.ops.aten, name).out  # the out= overload keeps aten's own kernel

    def kernel(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not all(t.dtype == torch.float16 for t in tensors):  # fp32, bf16, mixed: as before
            return stock(*args, **kwargs, out=tensors[0].new_empty(0))
        wide = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
        return stock(*wide, **kwargs, out=wide[0].new_empty(0)).half()

    return kernel


def fast_cpu_fp16_products() -> bool:
    """Run fp16 matrix products on a CPU through fp32 BLAS: the fp16 inputs multiplied and summed
    in fp32, the result rounded to fp16 once. That is the arithmetic of torch's own CPU fp16
    kernels (they sum in fp32 too), at fp32 speed; results can differ from theirs in the last bit
    (the order of the sums). Other dtypes give the same values as before, through a Python kernel
    (a few microseconds more per call). Process-wide, once: ``get_profile("t4-cpu")`` calls it
    (with ``check``, its default). Returns whether it registered the kernels now."""
    global _registered
    if _registered is not None:
        return False
    import warnings

    with warnings.catch_warnings():  # torch warns that aten's kernels are overridden: meant
        warnings.simplefilter("ignore", UserWarning)
        library = torch.library.Library("aten", "IMPL")
        for name in _PRODUCTS:
            library.impl(name, _product(name), "CPU")
    _registered = library
    return True
