"""Bring your own SFT policy: convert it into this package's checkpoint (safetensors + config),
which policy_node, learner_node and the benches take like the package's own.

    python -m tinyvla_grpo_ros.import_policy SRC DST [--base BASE] [--cameras N]

SRC is one of:
- a LeRobot DiffusionPolicy directory (config.json with "type": "diffusion" +
  model.safetensors; normalization statistics inside the model file, LeRobot <= v0.3, or in the
  policy_preprocessor / policy_postprocessor files, v0.4 and later);
- a TinyVLA run directory (config.json of llava_pythia, dataset_stats.pkl, tokenizer.json and
  checkpoint-N/ with the LoRA and non_lora_trainables.bin; the newest checkpoint unless SRC
  names one). The tensors the run did not train come from BASE, the model it was trained from;
  the LoRA is merged into the weights.
What the package does not compute the way the source does is refused by name, and nothing is
written. The checkpoint's meta lists the source's cameras in the model's order: give
policy_node's camera_topics in that order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.checkpoint import save_checkpoint
from .core.safe_load import SourceError
from .importers import lerobot, tinyvla


def import_policy(src: Path, dst: Path, base: Path | None = None,
                  cameras: int | None = None) -> Path:
    src = Path(src)
    if lerobot.is_lerobot_dir(src):
        model, scfg, meta = lerobot.import_lerobot(src)
    elif tinyvla.is_tinyvla_dir(src):
        model, scfg, meta = tinyvla.import_tinyvla(src, base=base, cameras=cameras)
    elif not (src / "config.json").is_file() and not (src.parent / "config.json").is_file():
        raise SourceError(f"{src}: no config.json: not a policy directory")
    else:
        raise SourceError(f"{src}: neither a LeRobot diffusion policy (config.json type "
                          "'diffusion') nor a TinyVLA run (model_type 'llava_pythia'); no "
                          "other format is supported yet")
    return save_checkpoint(dst, model, scfg, meta=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path, help="the source policy directory")
    ap.add_argument("dst", type=Path, help="the checkpoint directory to write")
    ap.add_argument("--base", type=Path, default=None,
                    help="TinyVLA: the base model directory the run was trained from")
    ap.add_argument("--cameras", type=int, default=None,
                    help="TinyVLA with concat token_cat: how many cameras (default 2)")
    args = ap.parse_args(argv)
    try:
        out = import_policy(args.src, args.dst, args.base, args.cameras)
    except SourceError as e:
        print(f"import_policy: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.src} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
