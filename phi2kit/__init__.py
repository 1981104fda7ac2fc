"""phi2kit: helpers for the Phi-2 LoRA/QLoRA fine-tuning course.

Modules follow the notebooks: ``profiles`` and ``models`` (01), ``data`` and ``evaluate``
(02-09), ``training`` (02-06), ``lora`` (02-09), ``chat`` (06), ``rewards`` (09), ``plan`` (the
memory planner), ``tiny`` (the shipped tiny Phi), ``commands`` (the ``phi2kit`` command).
"""

__version__ = "0.1.0"
