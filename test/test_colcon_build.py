"""The repository builds with colcon as one ROS 2 package (interfaces included)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def test_colcon_build_installs_interfaces_and_python_package(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.fail("colcon is not in the venv: scripts/setup_env.sh installs it")
    src = tmp_path / "src" / "tinyvla_grpo_ros"
    for rel in _tracked_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    venv = str(Path(sys.executable).parents[1])
    env = dict(os.environ, CMAKE_PREFIX_PATH=venv, AMENT_PREFIX_PATH=venv,
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    res = subprocess.run([str(colcon), "build",
                          "--cmake-args", "-DPython3_EXECUTABLE=" + sys.executable,
                          "-DBUILD_TESTING=OFF"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    site = tmp_path / "install/tinyvla_grpo_ros/lib/python3.11/site-packages"
    assert (site / "tinyvla_grpo_interfaces/msg/_action_chunk.py").is_file()
    assert (site / "tinyvla_grpo_ros/core/__init__.py").is_file()
    share = tmp_path / "install/tinyvla_grpo_ros/share"
    assert (share / "tinyvla_grpo_interfaces/msg/ActionChunk.msg").is_file()
    # The built interfaces import from the workspace's install tree, not from the venv's copy.
    probe = subprocess.run(
        [sys.executable, "-c", "import tinyvla_grpo_interfaces.msg as m; print(m.__file__)"],
        env=dict(env, PYTHONPATH=str(site)), capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert str(tmp_path) in probe.stdout
