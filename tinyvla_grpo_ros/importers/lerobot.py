"""LeRobot DiffusionPolicy directories <-> this package's checkpoints (architecture
"diffusion_policy", core/dp_model.py).

A LeRobot directory holds `config.json` (`"type": "diffusion"`) and `model.safetensors` (every
tensor under `diffusion.`). The normalization statistics live in the model file up to LeRobot
v0.3 (`normalize_inputs.buffer_observation_state.min`, ...) and from v0.4 in the processor
files (`policy_preprocessor.json` naming `*_normalizer_processor.safetensors`, keys such as
`observation.state.min`; `policy_postprocessor.json` for the action's). Every source tensor is
used or refused by name, every model tensor is filled, and a config value the package does not
run the way the source does is refused by name (`SourceError`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..core import atomic_io
from ..core.checkpoint import check_state_dict
from ..core.config import ModelConfig, SamplerConfig
from ..core.model import build_model
from ..core.safe_load import SourceError, TensorSource, load_tensors

STATE, ACTION = "observation.state", "action"
NORMALIZATION = {"VISUAL": ("MEAN_STD", "IDENTITY"), "STATE": ("MIN_MAX",), "ACTION": ("MIN_MAX",)}
DEFAULT_BETAS = (0.0001, 0.02)


def is_lerobot_dir(src: Path) -> bool:
    try:
        return json.loads((Path(src) / "config.json").read_text()).get("type") == "diffusion"
    except (OSError, ValueError, AttributeError):
        return False


def _refuse(path: Path, key: str, value, why: str) -> SourceError:
    return SourceError(f"{path}: {key} = {value!r} is not supported: {why}")


def model_config(cfg: dict, path: Path) -> tuple[ModelConfig, SamplerConfig, list[str]]:
    """config.json -> (ModelConfig, SamplerConfig, camera keys in the model's order)."""
    get = lambda k, d=None: cfg.get(k, d)  # noqa: E731
    if get("type") != "diffusion":
        raise _refuse(path, "type", get("type"), "not a LeRobot diffusion policy")
    feats = get("input_features") or {}
    cams = [k for k, f in feats.items() if f.get("type") == "VISUAL"]
    other = [k for k, f in feats.items() if k != STATE and f.get("type") != "VISUAL"]
    if other:
        raise _refuse(path, "input_features", other, "only observation.state and images")
    if STATE not in feats:
        raise SourceError(f"{path}: input_features has no {STATE!r}")
    if not cams:
        raise SourceError(f"{path}: input_features has no image (VISUAL) feature")
    shapes = {tuple(feats[k]["shape"]) for k in cams}
    (c, h, w), = shapes if len(shapes) == 1 else [(0, 0, 1)]
    if c != 3 or h != w:
        raise _refuse(path, "image shapes", sorted(shapes), "one square RGB shape [3, S, S] "
                      "for every camera")
    action = (get("output_features") or {}).get(ACTION)
    if not action:
        raise SourceError(f"{path}: output_features has no {ACTION!r}")
    for kind, allowed in NORMALIZATION.items():
        mode = (get("normalization_mapping") or {}).get(kind, allowed[0])
        if mode not in allowed:
            raise _refuse(path, f"normalization_mapping.{kind}", mode, f"one of {allowed}")
    checks = [("vision_backbone", "resnet18"), ("prediction_type", "epsilon")]
    for key, want in checks:
        if get(key, want) != want:
            raise _refuse(path, key, get(key), f"only {want!r}")
    if get("clip_sample", True) and get("clip_sample_range", 1.0) != 1.0:
        raise _refuse(path, "clip_sample_range", get("clip_sample_range"), "only 1.0")
    sched = str(get("noise_scheduler_type", "DDPM")).upper()
    if sched not in ("DDPM", "DDIM"):
        raise _refuse(path, "noise_scheduler_type", sched, "DDPM or DDIM")
    beta = get("beta_schedule", "squaredcos_cap_v2")
    if beta != "squaredcos_cap_v2" and (get("beta_start", DEFAULT_BETAS[0]),
                                         get("beta_end", DEFAULT_BETAS[1])) != DEFAULT_BETAS:
        raise _refuse(path, "beta_start/beta_end", (get("beta_start"), get("beta_end")),
                      f"{beta} only with diffusers' defaults {DEFAULT_BETAS}")
    resize, crop = get("resize_shape"), get("crop_shape")
    if resize is not None:
        if _square_side(resize) is None:
            raise _refuse(path, "resize_shape", resize, "a square resize")
        ratio = get("crop_ratio", 1.0)            # LeRobot derives crop_shape from it then
        if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise _refuse(path, "crop_ratio", ratio, "a number in (0, 1]")
        crop = [int(resize[0] * ratio)] * 2 if ratio < 1.0 else None
    side = _square_side(resize) if resize is not None else h
    if crop is not None and not 0 < (_square_side(crop) or 0) <= side:
        raise _refuse(path, "crop_shape", crop, "a square crop no larger than the (resized) "
                      "image")
    try:
        mcfg = ModelConfig(
            name="lerobot_diffusion", architecture="diffusion_policy", image_size=h,
            num_cameras=len(cams), state_dim=int(feats[STATE]["shape"][0]),
            action_dim=int(action["shape"][0]), horizon=int(get("horizon")),
            down_dims=tuple(get("down_dims")), kernel_size=int(get("kernel_size")),
            n_groups=int(get("n_groups")), step_embed_dim=int(get("diffusion_step_embed_dim")),
            num_train_timesteps=int(get("num_train_timesteps")), beta_schedule=beta,
            clip_sample=bool(get("clip_sample", True)),
            film_scale=bool(get("use_film_scale_modulation", True)),
            dp_keypoints=int(get("spatial_softmax_num_keypoints")),
            dp_backbone_norm="group" if get("use_group_norm") else "batch",
            dp_separate_encoders=bool(get("use_separate_rgb_encoder_per_camera", False)),
            dp_crop=int(crop[0]) if crop else 0, n_obs_steps=int(get("n_obs_steps", 1)),
            dp_resize=int(resize[0]) if resize is not None else 0)
        k = int(get("num_inference_steps") or mcfg.num_train_timesteps)
        scfg = SamplerConfig(scheduler=sched.lower(), num_inference_steps=k,
                             stochastic_steps=min(3, k),
                             executed_steps=int(get("n_action_steps")))
    except (TypeError, ValueError, KeyError) as e:
        raise SourceError(f"{path}: {e}") from e
    if scfg.executed_steps > mcfg.horizon - mcfg.action_offset:
        raise _refuse(path, "n_action_steps", scfg.executed_steps, f"at most horizon - "
                      f"n_obs_steps + 1 = {mcfg.horizon - mcfg.action_offset}")
    return mcfg, scfg, cams


_BLOCK = [(r"\.blocks\.0\.", ".conv1.block."), (r"\.blocks\.1\.", ".conv2.block."),
          (r"\.film\.", ".cond_encoder.1."), (r"\.residual\.", ".residual_conv.")]


def source_name(name: str, separate: bool) -> str:
    """This package's tensor name -> LeRobot's (the model file, without normalization)."""
    if name.startswith("rgb_encoder."):
        rest = name.split(".", 2)
        return "diffusion.rgb_encoder." + (f"{rest[1]}." if separate else "") + rest[2]
    if name.startswith("head.step_encoder."):
        return name.replace("head.step_encoder.", "diffusion.unet.diffusion_step_encoder.")
    if name.startswith("head.final.0."):
        return name.replace("head.final.0.", "diffusion.unet.final_conv.0.block.")
    if name.startswith("head.final.1."):
        return name.replace("head.final.1.", "diffusion.unet.final_conv.1.")
    m = re.match(r"head\.(down|mid|up)\.(.*)", name)
    if not m:
        raise KeyError(name)
    out = "diffusion.unet." + {"down": "down_modules.", "mid": "mid_modules.",
                               "up": "up_modules."}[m.group(1)] + m.group(2)
    for pat, rep in _BLOCK:
        out = re.sub(pat, rep, out)
    return out


def _stat_key(feature: str) -> str:          # v0.3 buffers: dots become underscores
    return "buffer_" + feature.replace(".", "_")


def read_stats(src: Path, source: TensorSource, cams: list[str]) -> dict[str, torch.Tensor]:
    """The normalizer's buffers from the v0.3 model-file buffers or the v0.4+ processor files."""
    stats: dict[str, torch.Tensor] = {}
    pre, post = sorted(src.glob("policy_preprocessor*.json")), \
        sorted(src.glob("policy_postprocessor*.json"))
    if pre:
        flat = TensorSource()
        for path, registry in ((pre[0], "normalizer_processor"),
                               (post[0] if post else None, "unnormalizer_processor")):
            if path is None:
                continue
            try:
                steps = json.loads(path.read_text())["steps"]
            except (ValueError, KeyError, TypeError) as e:
                raise SourceError(f"{path}: not a processor pipeline ({e})") from e
            files = [s.get("state_file") for s in steps if s.get("registry_name") == registry]
            if not files or not files[0]:
                if registry == "normalizer_processor":
                    raise SourceError(f"{path}: no normalizer_processor step with a state_file")
                continue
            tensors = load_tensors(src / files[0])
            if registry == "unnormalizer_processor":   # the action's stats, as used on output
                tensors = {k: v for k, v in tensors.items() if k.startswith(ACTION + ".")}
                flat.tensors.update({k: v for k, v in tensors.items()})
                flat.origin.update({k: src / files[0] for k in tensors})
            else:
                flat.add_tensors(tensors, src / files[0])
        name = lambda feature, stat: f"{feature}.{stat}"  # noqa: E731
    else:
        flat = source
        prefix = {STATE: "normalize_inputs.", ACTION: "unnormalize_outputs."}
        name = lambda feature, stat: (prefix.get(feature, "normalize_inputs.")  # noqa: E731
                                      + f"{_stat_key(feature)}.{stat}")
        source.ignore_prefix("normalize_targets.", "the action's stats for training (the "
                             "same values as unnormalize_outputs)")
    stats["state_min"] = flat.take(name(STATE, "min")).reshape(-1)
    stats["state_max"] = flat.take(name(STATE, "max")).reshape(-1)
    stats["action_min"] = flat.take(name(ACTION, "min")).reshape(-1)
    stats["action_max"] = flat.take(name(ACTION, "max")).reshape(-1)
    means, stds = [], []
    for cam in cams:
        if flat.has(name(cam, "mean")):
            means.append(flat.take(name(cam, "mean")).reshape(3))
            stds.append(flat.take(name(cam, "std")).reshape(3))
        else:                                   # IDENTITY: no image statistics
            means.append(torch.zeros(3))
            stds.append(torch.ones(3))
    stats["image_mean"], stats["image_std"] = torch.stack(means), torch.stack(stds)
    return stats


def import_lerobot(src: Path) -> tuple[torch.nn.Module, SamplerConfig, dict]:
    """A LeRobot DiffusionPolicy directory -> (the package's model, its sampler, meta)."""
    src = Path(src)
    cfg_path = src / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{cfg_path}: not readable JSON ({e})") from e
    mcfg, scfg, cams = model_config(cfg, cfg_path)
    model = build_model(mcfg)
    source = TensorSource().add(src / "model.safetensors")
    target = model.state_dict()
    stats = read_stats(src, source, cams)
    state = {}
    for k, v in target.items():
        if k.startswith("normalizer."):
            field = k.split(".", 1)[1]
            state[k] = stats[field] if field in stats else v      # state mean/std: unused
            if tuple(state[k].shape) != tuple(v.shape):
                raise SourceError(f"{src}: normalization {field} has shape "
                                  f"{tuple(state[k].shape)}, the model needs {tuple(v.shape)}")
            continue
        state[k] = source.take(source_name(k, mcfg.dp_separate_encoders), tuple(v.shape)).to(
            v.dtype)
    source.check_all_accounted()
    check_state_dict(target, state, f"import of {src}")
    model.load_state_dict(state, strict=True)
    return model.eval(), scfg, {"source": "lerobot", "source_dir": str(src.resolve()),
                                "cameras": cams, "n_action_steps": scfg.executed_steps}


def _square_side(shape) -> int | None:
    """The side of a square [S, S] shape with S >= 1, else None."""
    ok = isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[0] == shape[1] and \
        isinstance(shape[0], int) and shape[0] >= 1
    return shape[0] if ok else None


def _crop_ratio(crop: int, resize: int) -> float:
    """LeRobot's crop_ratio for a crop of `crop` after a resize to `resize` (its config derives
    crop_shape = int(resize * crop_ratio), so the ratio must not round below `crop`)."""
    if not resize or not crop or crop >= resize:
        return 1.0
    ratio = crop / resize
    while int(resize * ratio) < crop:
        ratio = math.nextafter(ratio, 2.0)
    return ratio


def export_lerobot(model, scfg: SamplerConfig, dst: Path, cameras: list[str] | None = None,
                   layout: str = "v0.4") -> Path:
    """This package's diffusion_policy model -> a LeRobot directory (`layout` v0.3: statistics
    inside model.safetensors; v0.4: in the processor files)."""
    mcfg, dst = model.config, Path(dst)
    if mcfg.architecture != "diffusion_policy":
        raise ValueError("only a diffusion_policy model exports to LeRobot's layout")
    cams = cameras or [f"observation.images.cam{i}" for i in range(mcfg.num_cameras)]
    s = mcfg.image_size
    config = {
        "type": "diffusion", "n_obs_steps": mcfg.n_obs_steps, "horizon": mcfg.horizon,
        "n_action_steps": scfg.executed_steps or mcfg.horizon - mcfg.action_offset,
        "input_features": {STATE: {"type": "STATE", "shape": [mcfg.state_dim]}} | {
            c: {"type": "VISUAL", "shape": [3, s, s]} for c in cams},
        "output_features": {ACTION: {"type": "ACTION", "shape": [mcfg.action_dim]}},
        "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX",
                                  "ACTION": "MIN_MAX"},
        "vision_backbone": "resnet18",
        "resize_shape": [mcfg.dp_resize] * 2 if mcfg.dp_resize else None,
        "crop_ratio": _crop_ratio(mcfg.dp_crop, mcfg.dp_resize),
        "crop_shape": [mcfg.dp_crop, mcfg.dp_crop] if mcfg.dp_crop else None,
        "crop_is_random": False, "pretrained_backbone_weights": None,
        "use_group_norm": mcfg.dp_backbone_norm == "group",
        "spatial_softmax_num_keypoints": mcfg.dp_keypoints,
        "use_separate_rgb_encoder_per_camera": mcfg.dp_separate_encoders,
        "down_dims": list(mcfg.down_dims), "kernel_size": mcfg.kernel_size,
        "n_groups": mcfg.n_groups, "diffusion_step_embed_dim": mcfg.step_embed_dim,
        "use_film_scale_modulation": mcfg.film_scale,
        "noise_scheduler_type": scfg.scheduler.upper(),
        "num_train_timesteps": mcfg.num_train_timesteps, "beta_schedule": mcfg.beta_schedule,
        "beta_start": DEFAULT_BETAS[0], "beta_end": DEFAULT_BETAS[1],
        "prediction_type": "epsilon", "clip_sample": mcfg.clip_sample, "clip_sample_range": 1.0,
        "num_inference_steps": scfg.num_inference_steps}
    tensors, n = {}, model.normalizer
    for k, v in model.state_dict().items():
        if not k.startswith("normalizer."):
            tensors[source_name(k, mcfg.dp_separate_encoders)] = v.detach().cpu().contiguous()
    stats = {STATE: {"min": n.state_min, "max": n.state_max},
             ACTION: {"min": n.action_min, "max": n.action_max}} | {
        c: {"mean": n.image_mean[i].reshape(3, 1, 1), "std": n.image_std[i].reshape(3, 1, 1)}
        for i, c in enumerate(cams)}
    dst.mkdir(parents=True, exist_ok=True)
    flat = lambda keys: {f"{f}.{st}": t.detach().cpu().float().contiguous()  # noqa: E731
                         for f, d in stats.items() if f in keys for st, t in d.items()}
    if layout == "v0.3":
        for f, d in stats.items():
            for st, t in d.items():
                for prefix in (("normalize_targets.", "unnormalize_outputs.") if f == ACTION
                               else ("normalize_inputs.",)):
                    tensors[f"{prefix}{_stat_key(f)}.{st}"] = t.detach().cpu().float().clone()
    elif layout == "v0.4":
        for name, registry, keys in (
                ("policy_preprocessor", "normalizer_processor", list(stats)),
                ("policy_postprocessor", "unnormalizer_processor", [ACTION])):
            state_file = f"{name}_step_0_{registry}.safetensors"
            atomic_io.write_safetensors(dst / state_file, flat(keys))
            atomic_io.write_json(dst / f"{name}.json", {"name": name, "steps": [
                {"registry_name": registry, "config": {
                    "eps": 1e-8, "norm_map": config["normalization_mapping"]},
                 "state_file": state_file}]})
    else:
        raise ValueError(f"layout must be v0.3 or v0.4, got {layout!r}")
    atomic_io.write_safetensors(dst / "model.safetensors", tensors)
    atomic_io.write_json(dst / "config.json", config)
    return dst
