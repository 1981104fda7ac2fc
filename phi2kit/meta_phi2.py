"""Phi-2 on the meta device: every parameter with its real shape and dtype, no storage.

The model is built from Phi-2's published configuration (:func:`phi2kit.footprint.phi2_config`)
on PyTorch's ``meta`` device, so building the 2.78B-parameter model takes well under a
second and allocates nothing. PEFT's ``get_peft_model`` wraps meta modules as well, so the
adapter a notebook trains on Colab can be built and counted here (exercises 02_a and 06_c;
``bench/meta_report.py`` counts every recipe's adapter this way). Nothing here runs a
forward pass: meta tensors have no values.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from phi2kit.profiles import Profile, get_profile


def phi2_on_meta(
    num_labels: int | None = None, profile: Profile | str = "t4", config=None
) -> nn.Module:
    """Phi-2 (``PhiForCausalLM``) on the meta device: real shapes, no storage, no download.

    Args:
        num_labels: Build ``PhiForSequenceClassification`` with a ``num_labels``-way
            ``score`` head (no bias) instead of the causal LM.
        profile: ``t4``/``ampere`` give Phi-2; ``tiny`` gives the shipped tiny Phi's shapes.
        config: Another ``PhiConfig`` to build (e.g. Phi-2 with fewer layers); by default
            the profile's.
    """
    from transformers import PhiForCausalLM, PhiForSequenceClassification

    from phi2kit.footprint import phi2_config
    from phi2kit.tiny import tiny_config

    profile = get_profile(profile, check=False) if isinstance(profile, str) else profile
    if config is not None:
        cfg = copy.deepcopy(config)  # the caller's config is left as it was
    else:
        cfg = tiny_config() if profile.is_tiny else phi2_config()
    if num_labels is not None:
        cfg.num_labels = num_labels
    cls = PhiForCausalLM if num_labels is None else PhiForSequenceClassification
    with torch.device("meta"):
        model = cls(cfg)
    return model
