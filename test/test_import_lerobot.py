"""Importing a LeRobot DiffusionPolicy directory: parity with the source's own computation.

The source directories are synthetic, in exactly LeRobot's layouts (v0.3: statistics inside
model.safetensors; v0.4: policy_preprocessor / policy_postprocessor files), tiny, with random
weights, their tensor names taken from the table below (LeRobot's modeling_diffusion module
names). The reference forward is written here, functionally, over those names, as LeRobot's
code computes it; it never goes through the package's modules.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_rl_ready
from safetensors.torch import save_file

from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
from tinyvla_grpo_ros.core.model import Observation
from tinyvla_grpo_ros.core.safe_load import SourceError
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.import_policy import main as import_main
from tinyvla_grpo_ros.importers.lerobot import export_lerobot, import_lerobot

V04 = dict(layout="v0.4", cams=["observation.images.top", "observation.images.wrist"], S=64,
           crop=56, kp=4, down=[16, 32], k=3, g=8, dsed=16, film_scale=True, group_norm=False,
           separate=True, Ds=5, Da=3, horizon=8, n_action=4, sched="DDPM", K=None)
V03 = dict(V04, layout="v0.3", cams=["observation.image"], crop=None, film_scale=False,
           group_norm=True, separate=False, sched="DDIM", K=5)
HIST = dict(V04, To=2, n_action=6)        # observation history: two steps, LeRobot's default
HIST_SHARED = dict(V03, To=3, n_action=5)
RESIZE = dict(V04, resize=48, crop_ratio=0.9, crop=43)  # LeRobot derives the crop: int(48 * 0.9)


# ----- the source: LeRobot's tensor names and shapes -----
def resnet18_names(pre: str, group_norm: bool) -> dict[str, tuple]:
    def norm(p, c):
        out = {f"{p}.weight": (c,), f"{p}.bias": (c,)}
        if not group_norm:
            out |= {f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
                    f"{p}.num_batches_tracked": ()}
        return out
    t = {f"{pre}0.weight": (64, 3, 7, 7)} | norm(f"{pre}1", 64)
    c = 64
    for layer, w in zip((4, 5, 6, 7), (64, 128, 256, 512)):
        for b in (0, 1):
            q, cin = f"{pre}{layer}.{b}.", c if b == 0 else w
            t |= {q + "conv1.weight": (w, cin, 3, 3), q + "conv2.weight": (w, w, 3, 3)}
            t |= norm(q + "bn1", w) | norm(q + "bn2", w)
            if b == 0 and cin != w:
                t |= {q + "downsample.0.weight": (w, cin, 1, 1)} | norm(q + "downsample.1", w)
        c = w
    return t


def resblock_names(q: str, cin: int, cout: int, cond: int, c: dict) -> dict[str, tuple]:
    t = {q + "conv1.block.0.weight": (cout, cin, c["k"]), q + "conv1.block.0.bias": (cout,),
         q + "conv1.block.1.weight": (cout,), q + "conv1.block.1.bias": (cout,),
         q + "cond_encoder.1.weight": (cout * (2 if c["film_scale"] else 1), cond),
         q + "cond_encoder.1.bias": (cout * (2 if c["film_scale"] else 1),),
         q + "conv2.block.0.weight": (cout, cout, c["k"]), q + "conv2.block.0.bias": (cout,),
         q + "conv2.block.1.weight": (cout,), q + "conv2.block.1.bias": (cout,)}
    if cin != cout:
        t |= {q + "residual_conv.weight": (cout, cin, 1), q + "residual_conv.bias": (cout,)}
    return t


def feature_side(c: dict) -> int:
    s = c["crop"] or c.get("resize") or c["S"]
    for _ in range(5):                     # conv1 s2, maxpool s2, layers 2-4 s2 (k3/k7, pad)
        s = (s - 1) // 2 + 1
    return s


def lerobot_tensors(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    names: dict[str, tuple] = {}
    encoders = [f"diffusion.rgb_encoder.{i}." for i in range(len(c["cams"]))] \
        if c["separate"] else ["diffusion.rgb_encoder."]
    h = feature_side(c)
    for e in encoders:
        names |= resnet18_names(e + "backbone.", c["group_norm"])
        names |= {e + "pool.nets.weight": (c["kp"], 512, 1, 1), e + "pool.nets.bias": (c["kp"],),
                  e + "out.weight": (2 * c["kp"], 2 * c["kp"]), e + "out.bias": (2 * c["kp"],)}
    u, dsed = "diffusion.unet.", c["dsed"]
    cond = dsed + c.get("To", 1) * (c["Ds"] + len(c["cams"]) * 2 * c["kp"])
    names |= {u + "diffusion_step_encoder.1.weight": (4 * dsed, dsed),
              u + "diffusion_step_encoder.1.bias": (4 * dsed,),
              u + "diffusion_step_encoder.3.weight": (dsed, 4 * dsed),
              u + "diffusion_step_encoder.3.bias": (dsed,)}
    in_out = [(c["Da"], c["down"][0])] + list(zip(c["down"][:-1], c["down"][1:]))
    for i, (a, b) in enumerate(in_out):
        names |= resblock_names(f"{u}down_modules.{i}.0.", a, b, cond, c)
        names |= resblock_names(f"{u}down_modules.{i}.1.", b, b, cond, c)
        if i < len(in_out) - 1:
            names |= {f"{u}down_modules.{i}.2.weight": (b, b, 3), f"{u}down_modules.{i}.2.bias":
                      (b,)}
    for j in range(2):
        names |= resblock_names(f"{u}mid_modules.{j}.", c["down"][-1], c["down"][-1], cond, c)
    for i, (out, inn) in enumerate(reversed(in_out[1:])):
        names |= resblock_names(f"{u}up_modules.{i}.0.", inn * 2, out, cond, c)
        names |= resblock_names(f"{u}up_modules.{i}.1.", out, out, cond, c)
        names |= {f"{u}up_modules.{i}.2.weight": (out, out, 4), f"{u}up_modules.{i}.2.bias":
                  (out,)}
    d0 = c["down"][0]
    names |= {u + "final_conv.0.block.0.weight": (d0, d0, c["k"]),
              u + "final_conv.0.block.0.bias": (d0,), u + "final_conv.0.block.1.weight": (d0,),
              u + "final_conv.0.block.1.bias": (d0,), u + "final_conv.1.weight": (c["Da"], d0, 1),
              u + "final_conv.1.bias": (c["Da"],)}
    t = {}
    for k, shape in names.items():
        if k.endswith("num_batches_tracked"):
            t[k] = torch.tensor(100, dtype=torch.long)
        elif k.endswith("running_var"):
            t[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            t[k] = torch.randn(shape, generator=g) * 0.1
        else:
            fan = max(1, math.prod(shape[1:]))
            t[k] = torch.randn(shape, generator=g) / math.sqrt(fan) + (
                1.0 if k.endswith(("bn1.weight", "bn2.weight", "block.1.weight")) else 0.0)
    gx, gy = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, h))
    grid = torch.from_numpy(np.stack([gx.reshape(-1), gy.reshape(-1)], 1)).float()
    for e in encoders:
        t[e + "pool.pos_grid"] = grid.clone()
    return t


def lerobot_stats(c: dict, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    lo = -torch.rand(c["Ds"], generator=g) - 0.5
    alo = -torch.rand(c["Da"], generator=g) - 0.2
    return {"observation.state": {"min": lo, "max": lo + 1 + torch.rand(c["Ds"], generator=g)},
            "action": {"min": alo, "max": alo + 0.5 + torch.rand(c["Da"], generator=g)}} | {
        cam: {"mean": torch.rand(3, 1, 1, generator=g) * 0.5 + 0.25,
              "std": torch.rand(3, 1, 1, generator=g) * 0.2 + 0.1} for cam in c["cams"]}


def write_lerobot_dir(tmp, c: dict, tensors=None, stats=None, config_overrides=None):
    d = tmp / f"lerobot_{c['layout']}"
    d.mkdir(parents=True, exist_ok=True)
    tensors = dict(lerobot_tensors(c) if tensors is None else tensors)
    stats = lerobot_stats(c) if stats is None else stats
    config = {"type": "diffusion", "n_obs_steps": c.get("To", 1), "horizon": c["horizon"],
              "n_action_steps": c["n_action"],
              "input_features": {"observation.state": {"type": "STATE", "shape": [c["Ds"]]}} | {
                  cam: {"type": "VISUAL", "shape": [3, c["S"], c["S"]]} for cam in c["cams"]},
              "output_features": {"action": {"type": "ACTION", "shape": [c["Da"]]}},
              "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX",
                                        "ACTION": "MIN_MAX"},
              "vision_backbone": "resnet18",
              "resize_shape": [c["resize"]] * 2 if c.get("resize") else None,
              "crop_ratio": c.get("crop_ratio", 1.0),
              "crop_shape": [c["crop"], c["crop"]] if c["crop"] else None,
              "crop_is_random": True, "pretrained_backbone_weights": None,
              "use_group_norm": c["group_norm"], "spatial_softmax_num_keypoints": c["kp"],
              "use_separate_rgb_encoder_per_camera": c["separate"], "down_dims": c["down"],
              "kernel_size": c["k"], "n_groups": c["g"], "diffusion_step_embed_dim": c["dsed"],
              "use_film_scale_modulation": c["film_scale"],
              "noise_scheduler_type": c["sched"], "num_train_timesteps": 100,
              "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
              "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
              "num_inference_steps": c["K"]} | (config_overrides or {})
    if c["layout"] == "v0.3":
        for f, d_ in stats.items():
            key = "buffer_" + f.replace(".", "_")
            prefixes = ["normalize_targets.", "unnormalize_outputs."] if f == "action" \
                else ["normalize_inputs."]
            for p in prefixes:
                for st, v in d_.items():
                    tensors[f"{p}{key}.{st}"] = v.clone()
    else:
        flat = {f"{f}.{st}": v for f, d_ in stats.items() for st, v in d_.items()}
        save_file(flat, str(d / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
        save_file({k: v for k, v in flat.items() if k.startswith("action.")},
                  str(d / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
        (d / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor",
            "steps": [{"registry_name": "rename_observations_processor", "config": {}},
                      {"registry_name": "normalizer_processor", "config": {}, "state_file":
                       "policy_preprocessor_step_3_normalizer_processor.safetensors"}]}))
        (d / "policy_postprocessor.json").write_text(json.dumps({"name": "policy_postprocessor",
            "steps": [{"registry_name": "unnormalizer_processor", "config": {}, "state_file":
                       "policy_postprocessor_step_0_unnormalizer_processor.safetensors"}]}))
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    return d


# ----- the reference: LeRobot's computation over its own tensor names -----
def ref_norm(P, p, x, group_norm):
    if group_norm:
        return F.group_norm(x, P[p + ".weight"].numel() // 16, P[p + ".weight"], P[p + ".bias"])
    return F.batch_norm(x, P[p + ".running_mean"], P[p + ".running_var"], P[p + ".weight"],
                        P[p + ".bias"], training=False, eps=1e-5)


def ref_encoder(P, e, x, c):
    gn = c["group_norm"]
    x = F.relu(ref_norm(P, e + "backbone.1", F.conv2d(x, P[e + "backbone.0.weight"], stride=2,
                                                      padding=3), gn))
    x = F.max_pool2d(x, 3, 2, 1)
    for layer, stride in zip((4, 5, 6, 7), (1, 2, 2, 2)):
        for b in (0, 1):
            q, s = f"{e}backbone.{layer}.{b}.", stride if b == 0 else 1
            out = F.relu(ref_norm(P, q + "bn1", F.conv2d(x, P[q + "conv1.weight"], stride=s,
                                                         padding=1), gn))
            out = ref_norm(P, q + "bn2", F.conv2d(out, P[q + "conv2.weight"], padding=1), gn)
            idn = ref_norm(P, q + "downsample.1", F.conv2d(x, P[q + "downsample.0.weight"],
                                                           stride=s), gn) \
                if q + "downsample.0.weight" in P else x
            x = F.relu(out + idn)
    f = F.conv2d(x, P[e + "pool.nets.weight"], P[e + "pool.nets.bias"])
    attn = f.reshape(-1, f.shape[2] * f.shape[3]).softmax(-1)
    kp = (attn @ P[e + "pool.pos_grid"]).reshape(x.shape[0], -1)
    return F.relu(F.linear(kp, P[e + "out.weight"], P[e + "out.bias"]))


def ref_block(P, q, x, k):
    x = F.conv1d(x, P[q + ".block.0.weight"], P[q + ".block.0.bias"], padding=k // 2)
    return F.mish(F.group_norm(x, 8, P[q + ".block.1.weight"], P[q + ".block.1.bias"]))


def ref_res(P, q, x, cond, c):
    out = ref_block(P, q + "conv1", x, c["k"])
    emb = F.linear(F.mish(cond), P[q + "cond_encoder.1.weight"], P[q + "cond_encoder.1.bias"])
    emb = emb[..., None]
    n = out.shape[1]
    out = emb[:, :n] * out + emb[:, n:] if c["film_scale"] else out + emb
    out = ref_block(P, q + "conv2", out, c["k"])
    res = F.conv1d(x, P[q + "residual_conv.weight"], P[q + "residual_conv.bias"]) \
        if q + "residual_conv.weight" in P else x
    return out + res


def ref_eps(P, stats, c, images, state, x, t):
    """LeRobot's eps prediction: images (B, To, Nc, H, W, 3) uint8, state (B, To, Ds), x (B, Ta,
    Da); the global condition is [state, camera features] per observation step, flattened."""
    B, To = images.shape[:2]
    feats = []
    for i, cam in enumerate(c["cams"]):
        img = images[:, :, i].flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0   # (B*To, ...)
        img = (img - stats[cam]["mean"]) / (stats[cam]["std"] + 1e-8)
        side = c.get("resize") or c["S"]
        if c.get("resize"):           # torchvision's Resize on a tensor: bilinear, antialiased
            img = F.interpolate(img, size=(side, side), mode="bilinear", antialias=True,
                                align_corners=False)
        if c["crop"]:
            top = int(round((side - c["crop"]) / 2.0))
            img = img[..., top:top + c["crop"], top:top + c["crop"]]
        e = f"diffusion.rgb_encoder.{i}." if c["separate"] else "diffusion.rgb_encoder."
        feats.append(ref_encoder(P, e, img, c).reshape(B, To, -1))
    smin, smax = stats["observation.state"]["min"], stats["observation.state"]["max"]
    gcond = torch.cat([2 * (state - smin) / (smax - smin) - 1] + feats, dim=-1).flatten(1)
    half = c["dsed"] // 2
    freq = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    arg = t.float()[:, None] * freq[None]
    u = "diffusion.unet."
    temb = F.linear(F.mish(F.linear(torch.cat([arg.sin(), arg.cos()], -1),
                                    P[u + "diffusion_step_encoder.1.weight"],
                                    P[u + "diffusion_step_encoder.1.bias"])),
                    P[u + "diffusion_step_encoder.3.weight"],
                    P[u + "diffusion_step_encoder.3.bias"])
    cond = torch.cat([temb, gcond], -1)
    h, skips = x.transpose(1, 2), []
    n_down = len(c["down"])
    for i in range(n_down):
        h = ref_res(P, f"{u}down_modules.{i}.1.", ref_res(P, f"{u}down_modules.{i}.0.", h, cond,
                                                           c), cond, c)
        skips.append(h)
        if i < n_down - 1:
            h = F.conv1d(h, P[f"{u}down_modules.{i}.2.weight"], P[f"{u}down_modules.{i}.2.bias"],
                         stride=2, padding=1)
    for j in range(2):
        h = ref_res(P, f"{u}mid_modules.{j}.", h, cond, c)
    for i in range(n_down - 1):
        h = torch.cat([h, skips.pop()], 1)
        h = ref_res(P, f"{u}up_modules.{i}.1.", ref_res(P, f"{u}up_modules.{i}.0.", h, cond, c),
                    cond, c)
        h = F.conv_transpose1d(h, P[f"{u}up_modules.{i}.2.weight"], P[f"{u}up_modules.{i}.2.bias"],
                               stride=2, padding=1)
    h = ref_block(P, u + "final_conv.0", h, c["k"])
    h = F.conv1d(h, P[u + "final_conv.1.weight"], P[u + "final_conv.1.bias"])
    assert h.shape[0] == B
    return h.transpose(1, 2)


def obs_for(c, B=3, seed=0):
    """The package's observation: (B, To * Nc, S, S, 3) frames and (B, To * Ds) states."""
    g, To = torch.Generator().manual_seed(seed), c.get("To", 1)
    return Observation(torch.randint(0, 256, (B, To * len(c["cams"]), c["S"], c["S"], 3),
                                     generator=g, dtype=torch.uint8),
                       torch.randn((B, To * c["Ds"]), generator=g), ["ignored"] * B)


@pytest.mark.parametrize("c", [V04, V03, HIST, HIST_SHARED, RESIZE], ids=[
    "v0.4-batchnorm-2cams", "v0.3-groupnorm", "history-2-steps-2cams", "history-3-steps-shared",
    "resize-then-crop"])
def test_imported_noise_prediction_matches_lerobots_computation(tmp_path, c):
    src = write_lerobot_dir(tmp_path, c)
    model, scfg, meta = import_lerobot(src)
    P, stats = lerobot_tensors(c), lerobot_stats(c)
    obs, To, Nc = obs_for(c), c.get("To", 1), len(c["cams"])
    x = torch.randn(3, c["horizon"], c["Da"], generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 37, 99])
    with torch.no_grad():
        ours = model(x, t, model.encode(obs))
        ref = ref_eps(P, stats, c, obs.images.reshape(3, To, Nc, *obs.images.shape[2:]),
                      obs.state.reshape(3, To, c["Ds"]), x, t)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()
    assert scfg.scheduler == c["sched"].lower() and scfg.executed_steps == c["n_action"]
    assert scfg.num_inference_steps == (c["K"] or 100) and meta["cameras"] == c["cams"]
    # actions unnormalize with the file's statistics
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    chunk = sampler.sample(model, obs, deterministic=True)
    lo, hi = stats["action"]["min"], stats["action"]["max"]
    x0 = chunk.chain[:, -1, To - 1:]         # LeRobot executes from n_obs_steps - 1 on
    assert chunk.actions.shape == (3, c["horizon"] - To + 1, c["Da"])
    assert torch.allclose(chunk.actions, (x0 + 1) / 2 * (hi - lo) + lo, atol=1e-6)


def test_with_history_the_log_prob_scores_the_executed_actions_from_index_to_minus_one(tmp_path):
    """LeRobot executes actions[To-1 : To-1+n_action_steps]: those, and only those, are scored."""
    c = dict(HIST, K=4)
    model, scfg, _ = import_lerobot(write_lerobot_dir(tmp_path, c))
    sampler = DiffusionSampler(model.config, type(scfg)(**{**scfg.to_dict(),
                                                           "stochastic_steps": 2}), model)
    obs = obs_for(c, B=2)
    chunk = sampler.sample(model, obs, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp = sampler.chain_log_prob(model, obs, chunk.chain)
        assert torch.allclose(lp, chunk.log_probs, atol=1e-4)
        for index, counted in ((0, False), (1, True), (6, True), (7, False)):
            moved = chunk.chain.clone()
            moved[:, -1, index] += 0.5                   # x_0, at one chunk index
            changed = not torch.allclose(sampler.chain_log_prob(model, obs, moved), lp)
            assert changed == counted, index
    with pytest.raises(ValueError, match="overrun the horizon 8: at most 7"):
        DiffusionSampler(model.config, type(scfg)(**{**scfg.to_dict(), "executed_steps": 8}))


def test_sampling_rescoring_and_one_grpo_update_touch_only_the_adapter(tmp_path):
    for c in (dict(V03, K=4), dict(HIST_SHARED, K=4)):
        model, scfg, _ = import_lerobot(write_lerobot_dir(tmp_path / str(c.get("To")), c))
        scfg = type(scfg)(**{**scfg.to_dict(), "stochastic_steps": 2})
        assert_rl_ready(model, scfg, obs_for(c, B=2), "pick")


def test_the_cli_writes_a_checkpoint_every_node_loads_and_export_round_trips(tmp_path):
    src = write_lerobot_dir(tmp_path, V04)
    assert import_main([str(src), str(tmp_path / "ckpt")]) == 0
    model, scfg, meta = load_checkpoint(tmp_path / "ckpt")
    direct, _, _ = import_lerobot(src)
    obs, x, t = obs_for(V04), torch.randn(3, 8, 3), torch.tensor([1, 2, 3])
    with torch.no_grad():
        assert torch.equal(model(x, t, model.encode(obs)), direct(x, t, direct.encode(obs)))
    for layout in ("v0.3", "v0.4"):               # export, import again: the same tensors
        back, scfg2, _ = import_lerobot(export_lerobot(model, scfg, tmp_path / layout,
                                                       meta["cameras"], layout))
        assert scfg2.to_dict() == scfg.to_dict()
        sd, sd2 = model.state_dict(), back.state_dict()
        assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd
                                               if not k.startswith("normalizer.state_"))


def test_export_keeps_history_resize_and_crop_as_lerobot_reads_them(tmp_path):
    """LeRobot derives the crop from resize_shape and crop_ratio (int(side * ratio)): the
    exported ratio gives back the same crop, and the history, resize and executed steps."""
    c = dict(RESIZE, To=2, resize=49, crop_ratio=0.66, crop=32)   # 49 * (32 / 49) < 32
    model, scfg, meta = import_lerobot(write_lerobot_dir(tmp_path, c))
    assert (model.config.dp_resize, model.config.dp_crop, model.config.n_obs_steps) == (49, 32, 2)
    out = export_lerobot(model, scfg, tmp_path / "out", meta["cameras"])
    back, scfg2, _ = import_lerobot(out)
    assert back.config == model.config and scfg2.to_dict() == scfg.to_dict()
    assert int(49 * json.loads((out / "config.json").read_text())["crop_ratio"]) == 32


@pytest.mark.parametrize("edit,words", [
    ({"config": {"n_obs_steps": 2, "n_action_steps": 8}},
     "n_action_steps = 8 is not supported: at most horizon - n_obs_steps + 1 = 7"),
    ({"config": {"vision_backbone": "resnet34"}}, "vision_backbone = 'resnet34'"),
    ({"config": {"resize_shape": [48, 64]}}, "resize_shape = [48, 64] is not supported: a square"),
    ({"config": {"resize_shape": 48}}, "resize_shape = 48 is not supported: a square"),
    ({"config": {"resize_shape": [48, 48], "crop_ratio": "0.9"}},
     "crop_ratio = '0.9' is not supported: a number in (0, 1]"),
    ({"config": {"prediction_type": "sample"}}, "prediction_type = 'sample'"),
    ({"nan": "diffusion.unet.final_conv.1.weight"},
     "model.safetensors: tensor 'diffusion.unet.final_conv.1.weight' is not finite"),
    ({"drop": "diffusion.unet.mid_modules.0.conv1.block.0.weight"},
     "tensor 'diffusion.unet.mid_modules.0.conv1.block.0.weight' is missing"),
    ({"shape": "diffusion.rgb_encoder.pool.out.weight"}, None),
    ({"extra": "diffusion.unet.something_new.weight"},
     "neither used nor known to be ignorable, e.g. ['diffusion.unet.something_new.weight']"),
], ids=["history", "backbone", "resize", "resize-int", "crop-ratio", "prediction", "nan",
        "missing", "shape", "extra"])
def test_what_cannot_be_imported_is_refused_by_name_and_nothing_is_written(tmp_path, edit, words):
    c = V03
    tensors = lerobot_tensors(c)
    if "nan" in edit:
        tensors[edit["nan"]] = tensors[edit["nan"]].clone().fill_(float("nan"))
    if "drop" in edit:
        del tensors[edit["drop"]]
    if "shape" in edit:
        tensors["diffusion.rgb_encoder.out.weight"] = torch.zeros(3, 3)
        words = ("tensor 'diffusion.rgb_encoder.out.weight' has shape (3, 3), the model needs "
                 "(8, 8)")
    if "extra" in edit:
        tensors[edit["extra"]] = torch.zeros(2)
    src = write_lerobot_dir(tmp_path, c, tensors=tensors, config_overrides=edit.get("config"))
    with pytest.raises(SourceError, match=None) as e:
        import_lerobot(src)
    assert words in str(e.value)
    assert import_main([str(src), str(tmp_path / "ckpt")]) == 2
    assert not (tmp_path / "ckpt").exists()


def test_policy_node_runs_an_imported_lerobot_policy_over_dds(tmp_path):
    """The imported checkpoint is one every node takes: policy_node samples chunks from it for
    the sim's 9 joints and 4 end-effector actions, with log-probs to re-score."""
    from ros_harness import chunks_from_policy_node
    c = dict(V03, Ds=9, Da=4, S=32, K=5, n_action=4)
    assert import_main([str(write_lerobot_dir(tmp_path, c)), str(tmp_path / "ckpt")]) == 0
    m = chunks_from_policy_node(tmp_path, tmp_path / "ckpt", 4, image_size=32)[-1]
    assert (m.horizon, m.action_dim, m.executed_steps) == (8, 4, 4)
    assert m.scheduler == "ddim" and m.num_inference_steps == 5 and len(m.log_probs) == 3
    assert all(math.isfinite(v) for v in m.actions)


def test_the_sim_runner_gives_a_history_policy_consecutive_control_steps(tmp_path):
    """In Meta-World, a To = 2 policy decides on the frames and joints of the control step before
    the decision and of the decision's own (the first decision: the reset frame twice), and
    what it recorded re-scores to its log-probs."""
    from tinyvla_grpo_ros.sim.metaworld_scene import MetaWorldScene
    from tinyvla_grpo_ros.sim.rollout import run_lockstep
    c = dict(HIST_SHARED, To=2, Ds=9, Da=4, S=32, K=4, n_action=4)
    model, scfg, _ = import_lerobot(write_lerobot_dir(tmp_path, c))
    sampler = DiffusionSampler(model.config, type(scfg)(**{**scfg.to_dict(),
                                                           "stochastic_steps": 2}), model)
    scene = MetaWorldScene("reach-v3", image_size=32, max_steps=12)
    ep = run_lockstep([scene], model, sampler, [3], False, torch.Generator().manual_seed(0),
                      record=True)[0]
    assert len(ep.frames) == 3
    first, second = ep.frames[0], ep.frames[1]
    assert first["images"].shape == (2, 32, 32, 3) and first["states"].shape == (18,)
    assert torch.equal(first["images"][0], first["images"][1])
    executed = model.normalizer.unnormalize_action(first["chains"][-1])[1:5].numpy()
    replay = MetaWorldScene("reach-v3", image_size=32, max_steps=12)
    replay.reset(3)
    for j, a in enumerate(executed):
        replay.step(a)
        if j == len(executed) - 2:
            before = replay.render(), replay.joint_positions()
    assert np.array_equal(second["images"][0].numpy(), before[0])
    assert np.array_equal(second["images"][1].numpy(), replay.render())
    assert np.allclose(second["states"].numpy(), np.concatenate([before[1],
                                                                 replay.joint_positions()]))
    obs = Observation(torch.stack([f["images"] for f in ep.frames]),
                      torch.stack([f["states"] for f in ep.frames]), ["x"] * 3)
    with torch.no_grad():
        lp = sampler.chain_log_prob(model, obs, torch.stack([f["chains"] for f in ep.frames]))
    assert torch.allclose(lp, torch.stack([f["log_probs"] for f in ep.frames]), atol=1e-4)
    scene.close()
    replay.close()


def test_policy_node_keeps_the_observation_history_a_lerobot_policy_needs(tmp_path):
    """Over DDS, with a camera and joint states at the control rate: each chunk carries the To
    frames and states it was decided on (one control period apart), and a deterministic
    chunk's actions are the model's on exactly those. One frame per decision
    (decision_period_s 0) gives no history: the node refuses it at start, by name."""
    import time

    from ros_harness import Client, SensorFeed, launch_policy_node
    from tinyvla_grpo_interfaces.msg import ActionChunk, EpisodeState

    from tinyvla_grpo_ros.core.policy_runtime import PolicyRuntime
    from tinyvla_grpo_ros.nodes.ros_common import LATCHED, RELIABLE, image_to_numpy
    c = dict(HIST_SHARED, To=2, Ds=9, Da=4, S=32, K=5, n_action=4)
    ckpt = tmp_path / "ckpt"
    assert import_main([str(write_lerobot_dir(tmp_path, c)), str(ckpt)]) == 0
    (tmp_path / "clockless").mkdir()
    refused, _ = launch_policy_node(tmp_path / "clockless", 4, checkpoint=ckpt)
    deadline = time.monotonic() + 60
    while refused.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert refused.poll() is not None and refused.poll()[1] != 0
    refused.stop()
    assert "decisions on a clock (decision_period_s -1 or > 0)" in \
        (tmp_path / "clockless" / "policy_node.log").read_text()
    launch, _ = launch_policy_node(tmp_path, 4, checkpoint=ckpt, decision_period_s="-1.0")
    client, chunks = Client("history"), []
    client.node.create_subscription(ActionChunk, "action_chunk",
                                    lambda m: chunks.append(m) if m.horizon else None, RELIABLE)
    feed = SensorFeed(client.node, image_size=32)
    client.node.create_publisher(EpisodeState, "episode_state", LATCHED).publish(EpisodeState(
        state=EpisodeState.RUNNING, episode_id="e1", task_id="reach-v3", deterministic=True,
        init_state_id=7))
    try:
        deadline, tick = time.monotonic() + 120, 0
        while len(chunks) < 3 and time.monotonic() < deadline:
            assert launch.poll() is None, (tmp_path / "policy_node.log").read_text()[-2000:]
            feed.publish(np.full((32, 32, 3), tick % 256, np.uint8))     # 80 Hz
            tick += 1
            client.executor.spin_once(timeout_sec=0.0)
            time.sleep(0.0125)
        assert len(chunks) >= 3, (tmp_path / "policy_node.log").read_text()[-2000:]
    finally:
        client.close()
        launch.stop()
    runtime = PolicyRuntime(ckpt, ["reach-v3"], tmp_path / "adapters")
    for m in chunks[1:3]:
        assert len(m.images) == 2 and len(m.joint_positions) == 18
        older, current = (Time_s(i.header.stamp) for i in m.images)
        assert 0.0 < current - older <= 0.0125 + 0.1        # one period back, within the gap
        frames = np.stack([image_to_numpy(i) for i in m.images])
        assert frames[0, 0, 0, 0] != frames[1, 0, 0, 0]       # two different frames
        chunk, _, _ = runtime.act(frames, np.asarray(m.joint_positions), m.instruction,
                                  deterministic=True, paired=(0, 7, m.chunk_index))
        ours = np.clip(chunk.actions[0].numpy(), -1, 1)
        assert np.allclose(np.asarray(m.actions).reshape(m.horizon, 4), ours, atol=1e-5)


def Time_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def test_a_history_policy_runs_the_sim_loop_with_a_streaming_camera(tmp_path):
    """sim_node as a robot: a camera streaming at 40 Hz in wall time, policy_node deciding on
    its clock from To = 2 steps, the episode manager storing chunks that carry both steps."""
    from ros_harness import one_group_through_the_nodes
    c = dict(HIST_SHARED, To=2, Ds=9, Da=4, S=32, K=5, n_action=4)
    ckpt = tmp_path / "ckpt"
    assert import_main([str(write_lerobot_dir(tmp_path, c)), str(ckpt)]) == 0
    eps, logs = one_group_through_the_nodes(tmp_path, {
        "sim_node": {"image_size": 32, "max_steps": 40, "pace": "wall", "camera_hz": 40.0},
        "policy_node": {"checkpoint": ckpt, "adapter_root": tmp_path / "adapters",
                        "trainable_preset": "adapters", "decision_period_s": -1.0},
        "episode_manager_node": {"group_size": 2, "num_groups": 1, "init_state_ids": "[4]",
                                 "eval_init_state_ids": "[-1]", "max_episode_s": 30.0,
                                 "max_chunks": 10, "store_root": tmp_path / "rollouts",
                                 "panel_port": -1}}, timeout=180)
    for e in eps:
        t = e.tensors
        assert t["images"].shape[1:] == (2, 32, 32, 3) and t["states"].shape[1:] == (18,)
        assert t["chains"].shape[0] >= 2, logs


def test_the_demo_names_a_checkpoint_it_cannot_read_and_starts_nothing(tmp_path, capsys):
    from tinyvla_grpo_ros.demo import main as demo
    assert demo(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "config.json missing" in capsys.readouterr().out
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model": {"horizon": "eight"}}')
    assert demo(["--checkpoint", str(tmp_path / "broken"), "--out", str(tmp_path / "r")]) == 2
    assert "broken/config.json: bad config" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()
