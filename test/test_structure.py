"""The product holds what the product uses: rooms with one job, and no import across them."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tinyvla_grpo_ros"


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against the package)."""
    tree, out = ast.parse(path.read_text()), set()
    pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(pkg[:len(pkg) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_core_never_imports_ros_and_nothing_imports_experiments_or_tests():
    for path in PKG.rglob("*.py"):
        mods = imports(path)
        assert not any(m.split(".")[0] == "experiments" for m in mods), path
        if "core" in path.parts:
            banned = ("rclpy", "tinyvla_grpo_ros.nodes", "tinyvla_grpo_ros.sim")
            assert not any(m.startswith(banned) for m in mods), path
    for path in (ROOT / "bench").glob("*.py"):
        mods = imports(path)
        assert not any(m.split(".")[0] in ("test", "helpers", "experiments") or
                       m.startswith("test_") for m in mods), path


def test_policy_node_imports_nothing_from_the_simulator():
    for name in ("policy_node.py", "policy_io.py", "adapter_swaps.py"):
        assert not any(".sim" in m for m in imports(PKG / "nodes" / name)), name


def test_every_node_file_is_a_shell_of_at_most_300_lines():
    for path in (PKG / "nodes").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name


def test_nothing_points_outside_the_repository():
    for path in list(ROOT.glob("*.md")) + list((ROOT / "docs").glob("*.md")) + \
            list(PKG.rglob("*.py")) + list((ROOT / "config").glob("*.yaml")):
        text = path.read_text()
        assert "../shared" not in text and "ROS_NOTES" not in text, path
