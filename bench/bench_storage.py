"""Bytes stored per episode, by camera resolution: the rollout store keeps what the model saw.

    storage_bytes_per_episode_64px      an episode of `--chunks` chunks from a 64x64 camera
    storage_bytes_per_episode_1080p     the same from a 1920x1080 camera (must be equal)
    thumbnail_bytes_1080p               the panel's JPEG thumbnail of a 1080p frame

Each frame goes the node's way: an Image message -> policy_io.Inputs.observation (fitted to the
model's input size, by crop) -> the chunk's image message -> the episode manager's conversion ->
core.rollout_store.episode_record -> RolloutStore.write_episode; the episode's directory is
then measured on disk. The model is the `tiny` preset (64 px input).
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.time import Time as RclTime
from sensor_msgs.msg import JointState

from tinyvla_grpo_ros.core.config import ModelConfig
from tinyvla_grpo_ros.core.inputs import Freshness, thumbnail_jpeg
from tinyvla_grpo_ros.core.rollout_store import RolloutStore, episode_record
from tinyvla_grpo_ros.core.safety import ActionLimits
from tinyvla_grpo_ros.nodes.policy_io import Inputs
from tinyvla_grpo_ros.nodes.ros_common import image_to_numpy, numpy_to_image


def episode_bytes(width: int, height: int, chunks: int, root: Path) -> int:
    size = ModelConfig.preset("tiny").image_size
    joints = [f"j{i}" for i in range(9)]
    inputs = Inputs(["image_raw"], joints, Freshness(1e9, 1e9), size, "crop", ["t"],
                    ActionLimits(np.full(4, -1.0), np.full(4, 1.0)), ["a0", "a1", "a2", "a3"])
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(chunks):
        now = time.time()
        stamp = Time(sec=int(now), nanosec=int(now % 1 * 1e9))
        img = numpy_to_image(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), stamp)
        inputs.images["image_raw"] = (img, time.monotonic())
        js = JointState(name=joints, position=[0.0] * 9)
        js.header.stamp = stamp
        inputs.on_joints(js, time.monotonic())
        obs = inputs.observation(RclTime(seconds=now), time.monotonic())
        assert not isinstance(obs, str), obs
        frames.append({"images": np.stack([image_to_numpy(m) for m in obs[3]]),
                       "states": obs[1].astype(np.float32),
                       "chains": np.zeros((4, 8, 4), np.float32),
                       "log_probs": np.zeros(3, np.float32), "executed": 4})
    store = RolloutStore(root)
    path = store.write_episode(episode_record(
        frames, success=True, episode_id="e0", group_id="g0", task="t",
        init_state_id=0, adapter_name="t", adapter_version=0, instruction="x"))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--chunks", type=int, default=38, help="chunks per episode (sim: 38)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        small = episode_bytes(64, 64, args.chunks, Path(d) / "64px")
        big = episode_bytes(1920, 1080, args.chunks, Path(d) / "1080p")
    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    print(f"an episode of {args.chunks} chunks: {small} bytes from 64x64, {big} from 1080p")
    print(f"storage_bytes_per_episode_64px={small}")
    print(f"storage_bytes_per_episode_1080p={big}")
    print(f"thumbnail_bytes_1080p={len(thumbnail_jpeg(frame))}")


if __name__ == "__main__":
    main()
