"""Rebuild the tiny Phi shipped in ``phi2kit/tiny/model`` from a generated corpus.

    python scripts/build_tiny.py            # about 5 minutes on 2 CPU cores
    python scripts/build_tiny.py --out /tmp/tiny --steps 50   # a quick smoke build

The corpus is written by ``phi2kit.tiny.synth`` (made up by this project). Seeds are fixed
and torch runs deterministically, so the same command gives the same weights on a CPU.
"""

import argparse
from pathlib import Path

import torch

from phi2kit.tiny import TINY_DIR
from phi2kit.tiny.build import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_DIR)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=24000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)  # the documented build machine: 2 cores
    build(args.out, n_docs=args.docs, steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
