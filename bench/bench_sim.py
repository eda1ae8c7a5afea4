"""Simulation costs: one camera frame (software rendering, headless) and physics steps per second.

    sim_render_ms               median time to render one 64x64 frame of reach-v3, fast quality
                                (no shadows, no multisampling; 224x224 printed for reference)
    sim_render_full_quality_ms  the same with Meta-World's default look
    render_fast_speedup         full / fast, measured side by side in this run
    sim_step_hz                 control steps (each 5 MuJoCo substeps) per second, no rendering
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
    ms = {}
    for quality in ("fast", "full"):
        for size in (64, 224):
            scene = MetaWorldScene("reach-v3", image_size=size, render_quality=quality)
            scene.reset(0)
            scene.render()                               # first frame builds the GL context
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                scene.render()
                times.append(time.perf_counter() - t0)
            ms[quality, size] = statistics.median(times) * 1e3
            print(f"render {size}x{size} ({quality}): {ms[quality, size]:.1f} ms")
            scene.close()
    print(f"sim_render_ms={ms['fast', 64]:.1f}")
    print(f"sim_render_full_quality_ms={ms['full', 64]:.1f}")
    print(f"render_fast_speedup={ms['full', 64] / ms['fast', 64]:.2f}")
    scene = MetaWorldScene("reach-v3", image_size=64)
    scene.reset(0)
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
