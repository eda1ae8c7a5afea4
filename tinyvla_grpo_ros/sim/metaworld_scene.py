"""A Meta-World (MuJoCo) scene as a robot sees it: joint states, a camera, EE-delta commands.

No ROS here: sim_node.py wraps this class. The same init-state id always gives the same scene:
ids map to Meta-World's own valid task variations, `MT1(task, seed=id // 50).train_tasks[id % 50]`.

Actions are Meta-World's: (dx, dy, dz) end-effector deltas in [-1, 1] and a gripper effort, applied
every physics control step (dt = 12.5 ms). The camera is rendered only when asked, i.e. at
decision points. Software rendering (llvmpipe) of Meta-World's default look costs ~70 ms a 64 px
frame, almost all of it shadow maps and 4x multisampling; render_quality="fast" turns both off
(~10 ms a frame, same geometry and colours).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

RENDER_QUALITIES = ("fast", "full")
ACTION_NAMES = ("ee_dx", "ee_dy", "ee_dz", "gripper")
JOINT_NAMES = ("right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6",
               "r_close", "l_close")
INSTRUCTIONS = {
    "reach-v3": "reach the red goal",
    "push-v3": "push the puck to the goal",
    "button-press-topdown-v3": "press the button from the top",
    "drawer-close-v3": "close the drawer",
    "window-open-v3": "open the window",
}


@functools.lru_cache(maxsize=16)
def _benchmark(task: str, seed: int):
    import metaworld
    return metaworld.MT1(task, seed=seed)


def expert_policy(task: str):
    """Meta-World's scripted expert for `task` (e.g. reach-v3 -> SawyerReachV3Policy)."""
    from metaworld import policies
    name = "Sawyer" + "".join(p.capitalize() for p in task.removesuffix("-v3").split("-")) \
        + "V3Policy"
    if not hasattr(policies, name):
        raise ValueError(f"no scripted expert {name} for task {task!r}")
    return getattr(policies, name)()


@dataclass
class StepResult:
    success: bool
    done: bool            # success or out of steps
    steps: int            # control steps since reset


class MetaWorldScene:
    def __init__(self, task: str = "reach-v3", image_size: int = 64, camera: str = "corner2",
                 max_steps: int = 150, goal_marker_radius: float = 0.0,
                 render_quality: str = "fast") -> None:
        """goal_marker_radius > 0 draws the goal site as a sphere of that radius (m): rendering
        only (sites do not collide; success keeps Meta-World's own distance test). Meta-World's
        2 cm marker is one or two pixels in a 64 px frame."""
        if render_quality not in RENDER_QUALITIES:
            raise ValueError(f"render_quality must be one of {RENDER_QUALITIES}, "
                             f"got {render_quality!r}")
        if task not in _benchmark_names():
            raise ValueError(f"unknown Meta-World task {task!r}")
        self.task, self.image_size, self.camera = task, image_size, camera
        self.max_steps = max_steps
        bench = _benchmark(task, 0)
        self.env = bench.train_classes[task](render_mode="rgb_array", camera_name=camera,
                                             width=image_size, height=image_size)
        self.env.set_task(bench.train_tasks[0])
        if render_quality == "fast":     # before the first render creates the GL context
            self.env.model.vis.quality.shadowsize = 0
            self.env.model.vis.quality.offsamples = 0
        sites = {self.env.model.site(i).name for i in range(self.env.model.nsite)}
        if goal_marker_radius > 0 and "goal" in sites:    # tasks without a goal site: no-op
            self.env.model.site_size[self.env.model.site("goal").id][0] = goal_marker_radius
        self.instruction = INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))
        self.obs: np.ndarray | None = None
        self.steps = 0
        self.success = False
        self.init_state_id = -1

    @property
    def dt(self) -> float:
        return float(self.env.dt)

    def reset(self, init_state_id: int) -> None:
        if init_state_id < 0:
            raise ValueError(f"init_state_id must be >= 0, got {init_state_id}")
        bench = _benchmark(self.task, init_state_id // 50)
        self.env.set_task(bench.train_tasks[init_state_id % 50])
        self.obs, _ = self.env.reset()
        # Meta-World's reset_model writes the object's qpos and the goal site after its last
        # mj_forward, so the positions the renderer draws (xpos, site_xpos) can still be the
        # previous episode's: the first frame after an episode that moved the puck showed it
        # where that episode left it, and deterministic evaluations of the same states in the
        # same scenes differed. mj_forward recomputes positions only; it does not step.
        import mujoco
        mujoco.mj_forward(self.env.model, self.env.data)
        self.steps, self.success, self.init_state_id = 0, False, init_state_id

    def step(self, action: np.ndarray) -> StepResult:
        if self.obs is None:
            raise RuntimeError("reset() the scene before stepping it")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (4,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 4 finite numbers {ACTION_NAMES}, got {a}")
        self.obs, _, _, _, info = self.env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
        self.steps += 1
        self.success = self.success or bool(info["success"])
        return StepResult(self.success, self.success or self.steps >= self.max_steps, self.steps)

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8, upright (MuJoCo's offscreen buffer is bottom-up)."""
        return np.ascontiguousarray(self.env.render()[::-1])

    def joint_positions(self) -> np.ndarray:
        return self.env.data.qpos[: len(JOINT_NAMES)].astype(np.float64).copy()

    def expert_action(self, expert) -> np.ndarray:
        return np.asarray(expert.get_action(self.obs), dtype=np.float64)

    def close(self) -> None:
        self.env.close()


@functools.lru_cache(maxsize=1)
def _benchmark_names() -> frozenset[str]:
    import metaworld
    return frozenset(metaworld.ALL_V3_ENVIRONMENTS)
