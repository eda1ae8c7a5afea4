"""Bring your own SFT policy: convert it into this package's checkpoint (safetensors + config),
which policy_node, learner_node and the benches take like the package's own.

    python -m tinyvla_grpo_ros.import_policy SRC DST

SRC: a LeRobot DiffusionPolicy directory (config.json with "type": "diffusion" +
model.safetensors; normalization statistics inside the model file, LeRobot <= v0.3, or in the
policy_preprocessor / policy_postprocessor files, v0.4 and later). What the package does not run
the way the source does (observation history, other backbones, non-square images, ...) is
refused by name, and nothing is written. The checkpoint's meta lists the source's camera keys in
the model's camera order: give policy_node's camera_topics in that order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.checkpoint import save_checkpoint
from .core.safe_load import SourceError
from .importers import lerobot


def import_policy(src: Path, dst: Path) -> Path:
    src = Path(src)
    if not (src / "config.json").is_file():
        raise SourceError(f"{src}: no config.json: not a policy directory")
    if not lerobot.is_lerobot_dir(src):
        raise SourceError(f"{src}: not a LeRobot diffusion policy directory (config.json type "
                          "'diffusion'); no other format is supported yet")
    model, scfg, meta = lerobot.import_lerobot(src)
    return save_checkpoint(dst, model, scfg, meta=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path, help="the source policy directory")
    ap.add_argument("dst", type=Path, help="the checkpoint directory to write")
    args = ap.parse_args(argv)
    try:
        out = import_policy(args.src, args.dst)
    except SourceError as e:
        print(f"import_policy: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.src} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
