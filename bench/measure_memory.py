"""What a loaded model and its optimizer hold, measured (not estimated): the checks on the
planner's counting (``phi2kit.footprint``) in ``tests/test_plan.py`` and
``bench/phi2_real_size.py``. Moved out of the library: no lesson imports it.
"""

from __future__ import annotations

from typing import Any


def model_bytes(model: Any) -> int:
    """Bytes a loaded model holds: parameters, buffers and bitsandbytes quant_state tensors.

    A ``Linear4bit``'s weight is packed uint8; its quant_state holds ``absmax`` and the nf4
    ``code``, and with double quantization ``offset`` and ``state2`` (``absmax``, ``code``).
    Storages shared by several tensors count once.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        qs = getattr(getattr(module, "weight", None), "quant_state", None)
        if qs is not None:
            tensors += [qs.absmax, qs.code]
            if qs.nested:
                tensors += [qs.offset, qs.state2.absmax, qs.state2.code]
    return _storage_bytes(tensors)


def _storage_bytes(tensors: Any) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in an optimizer's state (AdamW's moments, 8-bit states + absmax)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    return _storage_bytes(
        t for state in inner.state.values() for t in state.values() if hasattr(t, "untyped_storage")
    )


def live_bytes_tracker() -> Any:
    """A ``TorchDispatchMode`` that records the peak bytes of tensors allocated inside it.

    ``with tracker: loss.backward()`` then ``tracker.peak``. Every op output whose storage is
    new (not shared with an input: views and in-place ops allocate nothing) counts until its
    storage is freed. Tensors that existed before (the weights) are not counted; gradients
    created inside are. Allocator caching and fragmentation are not seen: this is what the
    planner's activation terms count, not what the allocator reserves.
    """
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.now = self.peak = 0

        def _free(self, key: int) -> None:
            self.now -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            out = func(*args, **(kwargs or {}))
            inputs = tree_flatten((args, kwargs))[0]
            seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if key in seen or key in self.live or size == 0:
                    continue
                self.live[key] = size
                self.now += size
                self.peak = max(self.peak, self.now)
                weakref.finalize(storage, self._free, key)
            return out

    return LiveBytes()
