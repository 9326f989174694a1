"""Train the feature networks shipped in ``src/scoredyn/assets`` (digits and MNIST classifiers).

Reproducible: fixed seed, single-threaded by default. Writes ``{net}.safetensors`` (weights) and
``{net}.json`` (data, split, seed, schedule, test accuracy, SHA-256) atomically::

    OMP_NUM_THREADS=1 python scripts/train_feature_nets.py --nets digits mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from scoredyn.metrics.features import NETS, train_feature_net

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "scoredyn" / "assets"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=sorted(NETS), choices=sorted(NETS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package assets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, for reproducibility)")
    parser.add_argument("--epochs", type=int, default=None, help="override the net's default epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.nets:
        path = train_feature_net(name, args.out, seed=args.seed, epochs=args.epochs)
        print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
