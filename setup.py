"""Python install of tinyvla_grpo_ros for the venv path (`make test`, `make demo`).

ROS 2 users build the repository with colcon instead (CMakeLists.txt, ament_cmake); both
install the same Python package. The pinned dependencies live in requirements.lock,
installed by scripts/setup_env.sh.
"""
from setuptools import find_packages, setup

setup(
    name="tinyvla_grpo_ros",
    version="0.1.0",
    description="On-robot GRPO fine-tuning of TinyVLA-style diffusion policies (ROS 2)",
    license="Apache-2.0",
    packages=find_packages(include=["tinyvla_grpo_ros", "tinyvla_grpo_ros.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "safetensors", "peft", "diffusers", "transformers"],
    entry_points={
        "console_scripts": [
            "tinyvla-sft = tinyvla_grpo_ros.core.sft:main",
        ]
    },
)
