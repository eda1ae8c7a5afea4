"""Deterministic, fully populated instances of every custom interface (used by both processes)."""
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tinyvla_grpo_interfaces.msg import ActionChunk, AdapterUpdate, EpisodeOutcome, GroupReady


def _header(rng: np.random.Generator) -> Header:
    return Header(stamp=Time(sec=int(rng.integers(0, 2**31)), nanosec=int(rng.integers(0, 10**9))),
                  frame_id="cam_%d" % rng.integers(0, 100))


def _f32(rng: np.random.Generator, n: int) -> list[float]:
    return rng.standard_normal(n).astype(np.float32).tolist()


def action_chunk(seed: int) -> ActionChunk:
    rng = np.random.default_rng(seed)
    K1, Ta, Da = 4, 16, 7                           # K'+1 chain states, horizon, action dim
    image = Image(header=_header(rng), height=224, width=224, encoding="rgb8", is_bigendian=0,
                  step=224 * 3, data=rng.integers(0, 256, 224 * 224 * 3, dtype=np.uint8).tobytes())
    return ActionChunk(
        header=_header(rng), episode_id="ep-%d" % seed, chunk_index=int(rng.integers(0, 1000)),
        task_id="reach-v3", adapter_name="reach-v3", adapter_version=int(rng.integers(0, 5000)),
        action_names=["joint_%d" % i for i in range(Da)], horizon=Ta, action_dim=Da,
        actions=_f32(rng, Ta * Da), executed_steps=8, scheduler="ddim", num_inference_steps=10,
        step_timesteps=[30, 20, 10], prev_timesteps=[20, 10, -1], chain=_f32(rng, K1 * Ta * Da),
        log_probs=_f32(rng, K1 - 1), eta=1.0, min_sampling_std=0.125, min_logprob_std=0.125,
        noise_clip=3.0, observation_stamp=Time(sec=12, nanosec=34), images=[image, image],
        camera_names=["front", "wrist"], joint_names=["joint_%d" % i for i in range(Da)],
        joint_positions=rng.standard_normal(Da).tolist(), instruction="reach the red ball ✓",
    )


def episode_outcome(seed: int) -> EpisodeOutcome:
    rng = np.random.default_rng(seed)
    return EpisodeOutcome(
        header=_header(rng), episode_id="ep-%d" % seed, group_id="g-%d" % seed, task_id="push-v3",
        init_state_id=int(rng.integers(0, 2**31)), reward=float(np.float32(rng.random())),
        success=True, decided_by=EpisodeOutcome.DECIDED_BY_SIMULATOR, adapter_name="push-v3",
        adapter_version=7, duration_s=float(rng.random() * 30), chunk_count=12)


def group_ready(seed: int) -> GroupReady:
    rng = np.random.default_rng(seed)
    return GroupReady(
        header=_header(rng), group_id="g-%d" % seed, task_id="reach-v3", init_state_id=3,
        adapter_name="reach-v3", adapter_version=2,
        episode_paths=["/tmp/store/reach-v3/g/ep%02d" % i for i in range(8)],
        rewards=[float(x) for x in rng.integers(0, 2, 8)])


def adapter_update(seed: int) -> AdapterUpdate:
    rng = np.random.default_rng(seed)
    return AdapterUpdate(
        header=_header(rng), adapter_name="reach-v3", version=12, parent_version=11,
        path="/tmp/adapters/reach-v3/v0012", sha256="ab" * 32,
        metric_names=["loss", "approx_kl", "clip_fraction"], metric_values=_f32(rng, 3))


SAMPLES = {
    "action_chunk": (ActionChunk, action_chunk),
    "episode_outcome": (EpisodeOutcome, episode_outcome),
    "group_ready": (GroupReady, group_ready),
    "adapter_update": (AdapterUpdate, adapter_update),
}
