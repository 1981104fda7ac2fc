"""phi2kit: helpers for the Phi-2 LoRA/QLoRA fine-tuning course (docs/maintainers.md, "Layout")."""

__version__ = "0.1.0"
