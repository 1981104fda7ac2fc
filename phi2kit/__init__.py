"""phi2kit: helpers for the Phi-2 LoRA/QLoRA fine-tuning course.

Modules follow the notebooks: ``profiles`` and ``models`` (01), ``data`` and ``evaluate``
(02-06), ``training`` (02-06), ``merging`` (05), ``plan`` (memory planner), ``tiny`` (the
shipped tiny Phi), ``cli`` (the ``phi2kit`` command).
"""

__version__ = "0.1.0"
