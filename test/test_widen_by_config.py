"""Widening the trainable set by config (a wider `preset`, nodes restarted): versions written under
the narrower preset still load, learning goes on from them, and a version of a wider preset than
the running one is refused with a clear error that changes nothing."""
import pytest
import torch
from helpers import random_obs, tiny_model

from tinyvla_grpo_ros.core.adapters import (
    AdaptedPolicy,
    AdapterConfig,
    read_adapter_version,
    save_adapter_version,
)
from tinyvla_grpo_ros.core.checkpoint import save_checkpoint
from tinyvla_grpo_ros.core.config import SamplerConfig
from tinyvla_grpo_ros.core.policy_runtime import PolicyRuntime
from tinyvla_grpo_ros.core.sampler import DiffusionSampler

WIDE = "adapters+head+norms"


def trained(preset: str, root, version: int = 1, seed: int = 1) -> AdaptedPolicy:
    """A policy of `preset` whose trainable tensors moved away from SFT, saved as `version`."""
    policy = AdaptedPolicy(tiny_model(), AdapterConfig(preset=preset, rank=2), ["pick"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_adapter_version(policy, root, version, parent=version - 1)
    return policy


def actions(policy: AdaptedPolicy) -> torch.Tensor:
    # the whole policy acts, the widened tensors on every step
    sampler = DiffusionSampler(policy.model.config, SamplerConfig(frozen_prefix=False))
    return sampler.sample(policy.model, random_obs(policy.model.config),
                          torch.Generator().manual_seed(0), deterministic=True).actions


def test_a_narrower_version_loads_into_a_wider_preset_with_sft_values_for_the_rest(tmp_path):
    narrow = trained("adapters", tmp_path)
    state, meta = read_adapter_version(tmp_path / "pick" / "v0001", tmp_path)
    assert meta["preset"] == "adapters"
    wide = AdaptedPolicy(tiny_model(), AdapterConfig(preset=WIDE, rank=2), ["pick"])
    sft = {n: p.detach().clone() for n, p in wide.model.named_parameters()
           if n in wide.base_keys}
    with torch.no_grad():                   # the wider set has trained since: head moved
        for n, p in wide.model.named_parameters():
            if n in wide.base_keys:
                p.add_(1.0)
    with pytest.raises(ValueError, match="missing tensors"):   # as its own preset: incomplete
        wide.load_adapter_state(state)
    wide.load_adapter_state(state, preset=meta["preset"])
    live = dict(wide.model.named_parameters())
    assert all(torch.equal(live[n], v) for n, v in sft.items())     # SFT values again
    torch.testing.assert_close(actions(wide), actions(narrow), rtol=0, atol=0)


def test_a_wider_version_is_refused_and_changes_nothing(tmp_path):
    trained(WIDE, tmp_path)
    state, meta = read_adapter_version(tmp_path / "pick" / "v0001", tmp_path)
    narrow = AdaptedPolicy(tiny_model(), AdapterConfig(preset="adapters", rank=2), ["pick"])
    before = actions(narrow)
    with pytest.raises(ValueError, match="written under preset 'adapters\\+head\\+norms'.*"
                                         "at least as wide"):
        narrow.load_adapter_state(state, preset=meta["preset"])
    torch.testing.assert_close(actions(narrow), before, rtol=0, atol=0)
    # a version missing a tensor its own preset trains is still refused
    head_key = next(k for k in state if k.startswith("head."))
    wide = AdaptedPolicy(tiny_model(), AdapterConfig(preset=WIDE, rank=2), ["pick"])
    with pytest.raises(ValueError, match="missing tensors"):
        wide.load_adapter_state({k: v for k, v in state.items() if k != head_key},
                                preset=meta["preset"])


def test_the_policy_runtime_swaps_to_a_narrower_version_and_back_and_refuses_a_wider(tmp_path):
    model = tiny_model()
    ckpt = save_checkpoint(tmp_path / "sft", model, SamplerConfig())
    root = tmp_path / "adapters"
    narrow = trained("adapters", root, version=1, seed=1)
    wide_v = trained(WIDE, root, version=2, seed=2)
    runtime = PolicyRuntime(ckpt, ["pick"], root, AdapterConfig(preset=WIDE, rank=2))
    runtime.apply_swap(runtime.prepare_swap("pick", 2))
    torch.testing.assert_close(actions(runtime.policy), actions(wide_v), rtol=0, atol=0)
    runtime.apply_swap(runtime.prepare_swap("pick", 1))     # a rollback across the widening
    torch.testing.assert_close(actions(runtime.policy), actions(narrow), rtol=0, atol=0)
    assert runtime.active == ("pick", 1)
    narrow_rt = PolicyRuntime(ckpt, ["pick"], root, AdapterConfig(preset="adapters", rank=2))
    with pytest.raises(ValueError, match="at least as wide"):
        narrow_rt.prepare_swap("pick", 2)
    assert narrow_rt.active == ("pick", 0)


def test_a_learner_restarted_wider_goes_on_from_its_newest_version_narrower_never_starts_over(
        tmp_path):
    from ros_harness import Client, start_node, stop
    from tinyvla_grpo_interfaces.msg import AdapterUpdate

    from tinyvla_grpo_ros.core.adapters import list_versions
    from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
    from tinyvla_grpo_ros.nodes.ros_common import LATCHED_HISTORY
    task = "reach-v3"
    ckpt = save_checkpoint(tmp_path / "sft", tiny_model(), SamplerConfig())
    root = tmp_path / "adapters"
    narrow = AdaptedPolicy(load_checkpoint(ckpt)[0], AdapterConfig(preset="adapters"), [task])
    save_adapter_version(narrow, root, 0, parent=None)
    with torch.no_grad():
        for p in narrow.trainable_parameters():
            p.add_(0.05)
    save_adapter_version(narrow, root, 1, parent=0)         # learned under `adapters`
    params = {"checkpoint": str(ckpt), "adapter_root": str(root), "device": "cpu",
              "store_root": str(tmp_path / "rollouts"), "trainable_preset": WIDE}
    client = Client("widen_by_config")
    updates: list[AdapterUpdate] = []
    client.node.create_subscription(AdapterUpdate, "adapter_update", updates.append,
                                    LATCHED_HISTORY)
    log = tmp_path / "learner_wide.log"
    proc = start_node("learner_node", params, log=log)
    try:
        assert client.spin_until(lambda: updates, 60), log.read_text()[-2000:]
        assert updates[-1].version == 1                     # went on from v1, no fresh start
        assert list_versions(root, task) == [0, 1]
    finally:
        stop(proc)
    # a version written under the wider preset, then a learner started narrower: it goes on
    # from the newest version it can carry and says why it skipped the wider one
    wide = AdaptedPolicy(load_checkpoint(ckpt)[0], AdapterConfig(preset=WIDE), [task])
    with torch.no_grad():
        for p in wide.trainable_parameters():
            p.add_(0.05)
    save_adapter_version(wide, root, 2, parent=1)
    narrow_params = params | {"trainable_preset": "adapters"}
    log = tmp_path / "learner_narrow.log"
    updates.clear()
    proc = start_node("learner_node", narrow_params, log=log)
    try:
        assert client.spin_until(lambda: updates and updates[-1].version == 1, 60), \
            log.read_text()[-2000:]
        assert "skipping reach-v3 v2" in log.read_text() and "at least as wide" in log.read_text()
    finally:
        stop(proc)
    # only versions it cannot carry: it refuses to start rather than hand out the SFT start
    only_wide = tmp_path / "only_wide"
    save_adapter_version(wide, only_wide, 0, parent=None)
    log = tmp_path / "learner_refused.log"
    proc = start_node("learner_node", narrow_params | {"adapter_root": str(only_wide)}, log=log)
    try:
        assert proc.wait(timeout=60) != 0
        text = log.read_text()
        assert "no stored version of reach-v3" in text and "at least as wide" in text, text[-2000:]
        assert list_versions(only_wide, task) == [0]        # nothing written, nothing lost
        assert list_versions(root, task) == [0, 1, 2]
    finally:
        stop(proc)
        client.close()
