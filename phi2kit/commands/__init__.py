"""The command-line layer: ``phi2kit course | train | plan | chat | bench | exercises``,
the Gradio app and the hub upload.

Each module here parses arguments and calls the library (the rest of ``phi2kit``, which the
notebooks import); the library never imports this package (``tests/test_layout.py``).
:mod:`phi2kit.commands.main` is the ``phi2kit`` entry point.
"""

from __future__ import annotations

import argparse

from phi2kit.profiles import PROFILES


def add_profile_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """The one ``--profile`` flag: a name from :data:`phi2kit.profiles.PROFILES`, or ``auto``."""
    names = [*PROFILES, "auto"]
    parser.add_argument(
        "--profile",
        default=default,
        choices=names,
        help=f"{', '.join(names)} (default {default}; auto reads PHI2KIT_PROFILE, then the GPU)",
    )
