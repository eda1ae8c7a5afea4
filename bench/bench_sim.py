"""Simulation costs: one camera frame (software rendering, headless) and physics steps per second.

    sim_render_ms   median time to render one 64x64 frame of reach-v3 (and 224x224 for reference)
    sim_step_hz     control steps (each 5 MuJoCo substeps) per second, no rendering
"""
import argparse
import statistics
import time

import numpy as np

from tinyvla_grpo_ros.sim.metaworld_scene import MetaWorldScene


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 20 if args.quick else 100
    for size in (64, 224):
        scene = MetaWorldScene("reach-v3", image_size=size)
        scene.reset(0)
        scene.render()                                   # first frame builds the GL context
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            scene.render()
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        print(f"render {size}x{size}: {ms:.1f} ms")
        if size == 64:
            print(f"sim_render_ms={ms:.1f}")
            rng = np.random.default_rng(0)
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < (2.0 if args.quick else 10.0):
                scene.reset(steps % 50) if scene.steps >= 140 else None
                scene.step(rng.uniform(-1, 1, 4))
                steps += 1
            print(f"sim_step_hz={steps / (time.perf_counter() - t0):.0f}")
        scene.close()


if __name__ == "__main__":
    main()
