"""TinyVLA run directories -> this package's checkpoints (architecture "tinyvla" with the
fields an imported run needs: CLIP patch features at LLaVA's select layer, the projector, the
Pythia LM, the run's BPE tokenizer and prompt, and the droid_diffusion head's pooling).

A run directory (TinyVLA's `train.py` output) holds `config.json` (LlavaPythiaConfig: GPTNeoX
fields, `vision_config.vision_tower` / `.mm_projector`, `action_dim`, `state_dim`,
`chunk_size`, `action_head_type: droid_diffusion`, `concat`), `dataset_stats.pkl` (numpy
arrays: action_min/max, qpos_mean/std), `tokenizer.json`, and `checkpoint-N/` directories with
`adapter_config.json`, `adapter_model.bin` or `.safetensors` (peft: `base_model.model.<module>.
lora_{A,B}.weight`) and `non_lora_trainables.bin` (non-LoRA tensors under `base_model.model.`).
Tensors the run did not train come from the base model it was trained from (`--base`, a
directory of `model.safetensors` or `pytorch_model.bin`, possibly sharded), as TinyVLA's own
loader takes them: base, then non_lora_trainables over it, then the LoRA merged into the
weights (W += alpha / r * B @ A). Every source tensor is used or ignored by name with a reason,
every model tensor filled; a config value the package does not compute the way TinyVLA does is
refused by name (`SourceError`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import check_state_dict
from ..core.config import ModelConfig, SamplerConfig
from ..core.model import build_model
from ..core.safe_load import SourceError, TensorSource, load_numpy_pickle, load_tensors
from ..core.tokenizer import PromptText

PREFIX = "base_model.model."
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)          # OpenAI CLIP's image processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
          "assistant gives helpful, detailed, and polite answers to the user's questions.")
# llava_pythia's "pythia" conversation template, as its eval builds the prompt
PROMPT = SYSTEM + " USER: <image>\n{instruction} ASSISTANT: <|endoftext|>"
TRAIN_PAD_ID = 1                 # TinyVLA's train.py sets tokenizer.pad_token_id = 1


def is_tinyvla_dir(src: Path) -> bool:
    run = run_dir(Path(src))
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and (cfg.get("model_type") == "llava_pythia"
                                      or "action_head_type" in cfg)


def run_dir(src: Path) -> Path:
    """SRC may be the run directory or one of its checkpoint-N directories."""
    return src.parent if (src / "adapter_config.json").is_file() else src


def checkpoint_dir(src: Path) -> Path:
    if (src / "adapter_config.json").is_file() or (src / "non_lora_trainables.bin").is_file():
        return src
    steps = sorted((int(m.group(1)), p) for p in src.glob("checkpoint-*")
                   if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir())
    if not steps:
        raise SourceError(f"{src}: no checkpoint-N directory")
    return steps[-1][1]


def _refuse(path: Path, key: str, value, why: str) -> SourceError:
    return SourceError(f"{path}: {key} = {value!r} is not supported: {why}")


def _head_shapes(source: TensorSource, path: Path) -> dict:
    """The droid_diffusion head's sizes, read off its tensors (TinyVLA fixes them in code)."""
    def shape(name):
        if not source.has(name):
            raise SourceError(f"{path}: tensor {name!r} is missing (the diffusion head)")
        return tuple(source.tensors[name].shape)
    h = "embed_out."
    down, i = [], 0
    while source.has(f"{h}down_modules.{i}.0.blocks.0.block.0.weight"):
        down.append(shape(f"{h}down_modules.{i}.0.blocks.0.block.0.weight")[0])
        i += 1
    if not down:
        raise SourceError(f"{path}: tensor '{h}down_modules.0.0.blocks.0.block.0.weight' is "
                          "missing (the diffusion head)")
    return dict(down_dims=tuple(down),
                kernel_size=shape(f"{h}down_modules.0.0.blocks.0.block.0.weight")[-1],
                step_embed_dim=shape(f"{h}diffusion_step_encoder.1.weight")[1])


def model_config(cfg: dict, path: Path, source: TensorSource, cameras: int | None
                 ) -> tuple[ModelConfig, SamplerConfig, int]:
    """config.json -> (ModelConfig, SamplerConfig, ViT layers in the source)."""
    get = cfg.get
    if get("action_head_type") != "droid_diffusion":
        raise _refuse(path, "action_head_type", get("action_head_type"), "only "
                      "'droid_diffusion' (the diffusion head)")
    vision = (get("vision_config") or {}).get("vision_tower") or {}
    proj = (get("vision_config") or {}).get("mm_projector") or {}
    name = str(vision.get("vision_model_name_or_path", "clip"))
    if "clip" not in name.lower():
        raise _refuse(path, "vision_tower.vision_model_name_or_path", name, "only CLIP towers")
    checks = [("use_parallel_residual", get("use_parallel_residual", True), True),
              ("hidden_act", get("hidden_act", "gelu"), "gelu"),
              ("mm_use_im_start_end", bool(get("mm_use_im_start_end", False)), False),
              ("vision_tower.hidden_act", vision.get("hidden_act", "quick_gelu"), "quick_gelu"),
              ("vision_tower.layer_norm_eps", vision.get("layer_norm_eps", 1e-5), 1e-5)]
    for key, value, want in checks:
        if value != want:
            raise _refuse(path, key, value, f"only {want!r}")
    feature = vision.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise _refuse(path, "mm_vision_select_feature", feature, "'patch' or 'cls_patch'")
    n_vit = int(vision.get("num_hidden_layers", 12))
    select = int(vision.get("mm_vision_select_layer", -2))
    kept = n_vit + 1 + select if select < 0 else select
    if not 1 <= kept <= n_vit:
        raise _refuse(path, "mm_vision_select_layer", select, f"a layer 1..{n_vit} of the ViT")
    concat = get("concat", "None")
    if concat not in ("None", "token_cat"):
        raise _refuse(path, "concat", concat, "'None' (one camera) or 'token_cat'")
    n_cams = cameras or (1 if concat == "None" else 2)
    if concat == "None" and n_cams != 1 or not 1 <= n_cams <= 3:
        raise _refuse(path, "cameras", n_cams, "1 with concat 'None', 1..3 with token_cat")
    if int(proj.get("hidden_size", get("hidden_size"))) != int(get("hidden_size")):
        raise _refuse(path, "mm_projector.hidden_size", proj.get("hidden_size"),
                      "the LM's hidden_size")
    try:
        mcfg = ModelConfig(
            name="tinyvla_import", image_size=int(vision.get("image_size", 224)),
            num_cameras=n_cams, state_dim=int(get("state_dim")),
            action_dim=int(get("action_dim")), horizon=int(get("chunk_size")), vision="vit",
            vit_hidden=int(vision.get("hidden_size", 768)), vit_layers=kept,
            vit_heads=int(vision.get("num_attention_heads", 12)),
            vit_patch=int(vision.get("patch_size", 32)),
            vit_intermediate=int(vision.get("intermediate_size", 3072)),
            vit_patch_only=feature == "patch",
            projector=str(proj.get("mm_projector_type", "linear")),
            lm_hidden=int(get("hidden_size")), lm_layers=int(get("num_hidden_layers")),
            lm_heads=int(get("num_attention_heads")),
            lm_intermediate=int(get("intermediate_size")),
            lm_vocab_size=int(get("vocab_size")), lm_rotary_pct=float(get("rotary_pct", 0.25)),
            lm_rotary_base=int(get("rotary_emb_base", 10000)),
            lm_norm_eps=float(get("layer_norm_eps", 1e-5)),
            lm_max_positions=int(get("max_position_embeddings", 2048)),
            tokenizer="bpe", prompt=PROMPT, text_pad_id=TRAIN_PAD_ID, cond_pooling="tinyvla",
            step_embed_dtype="bfloat16", image_mean=CLIP_MEAN, image_std=CLIP_STD,
            image_pad="mean", image_resample="bicubic",
            n_groups=8, num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
            clip_sample=True, **_head_shapes(source, path))
        # TinyVLA's DDIM: 100 train steps, 10 inference steps; without its temporal
        # aggregation its eval executes half the chunk
        scfg = SamplerConfig(scheduler="ddim", num_inference_steps=10, stochastic_steps=3,
                             executed_steps=max(1, mcfg.horizon // 2))
    except (TypeError, ValueError, KeyError) as e:
        raise SourceError(f"{path}: {e}") from e
    return mcfg, scfg, n_vit


def source_name(name: str) -> str:
    """This package's tensor name -> TinyVLA's (after base_model.model. is stripped)."""
    if name.startswith("vision.vit."):
        return "gpt_neox.vision_tower.vision_model." + name[len("vision.vit."):]
    if name.startswith("vision.proj"):
        return "gpt_neox.mm_projector" + name[len("vision.proj"):]
    if name.startswith("lm."):
        return "gpt_neox." + name[len("lm."):]
    if not name.startswith("head."):
        raise KeyError(name)
    n = name[len("head."):]
    n = re.sub(r"^step_encoder\.", "diffusion_step_encoder.", n)
    n = re.sub(r"^final\.0\.", "final_conv.0.block.", n)
    n = re.sub(r"^final\.1\.", "final_conv.1.", n)
    n = re.sub(r"^(down|up)\.(\d+)\.2\.", r"\1_modules.\2.2.conv.", n)
    n = re.sub(r"^(down|up|mid)\.", r"\1_modules.", n)
    n = re.sub(r"\.blocks\.(\d)\.", r".blocks.\1.block.", n)
    n = n.replace(".film.", ".cond_encoder.1.").replace(".residual.", ".residual_conv.")
    return "embed_out." + n


def _base_files(base: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (base / index).is_file():
            try:
                shards = sorted(set(json.loads((base / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as e:
                raise SourceError(f"{base / index}: not a shard index ({e})") from e
            return [base / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (base / name).is_file():
            return [base / name]
    raise SourceError(f"{base}: no model.safetensors or pytorch_model.bin (the base model)")


def merge_lora(weights: dict[str, torch.Tensor], ckpt: Path) -> int:
    """Merge the checkpoint's LoRA into `weights` (names without base_model.model.); the number
    of merged modules. A merged weight is W + scaling * B @ A."""
    cfg_path = ckpt / "adapter_config.json"
    if not cfg_path.is_file():
        return 0
    try:
        acfg = json.loads(cfg_path.read_text())
        r, alpha = int(acfg["r"]), float(acfg["lora_alpha"])
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{cfg_path}: not a peft LoRA config ({e})") from e
    for key, want in (("bias", "none"), ("fan_in_fan_out", False), ("use_dora", False)):
        if acfg.get(key, want) != want:
            raise _refuse(cfg_path, key, acfg.get(key), f"only {want!r}")
    scaling = alpha / (r ** 0.5 if acfg.get("use_rslora") else r)
    files = [ckpt / n for n in ("adapter_model.safetensors", "adapter_model.bin")
             if (ckpt / n).is_file()]
    if not files:
        raise SourceError(f"{ckpt}: adapter_config.json but no adapter_model.bin or "
                          ".safetensors")
    lora = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v
            for k, v in load_tensors(files[0]).items()}
    merged = 0
    for k in sorted(lora):
        m = re.fullmatch(r"(.*)\.lora_A(?:\.default)?\.weight", k)
        if not m:
            if not re.fullmatch(r".*\.lora_B(?:\.default)?\.weight", k):
                raise SourceError(f"{files[0]}: tensor {k!r} is not a LoRA A/B weight")
            continue
        mod = m.group(1)
        b_key = next((c for c in (f"{mod}.lora_B.weight", f"{mod}.lora_B.default.weight")
                      if c in lora), None)
        if b_key is None:
            raise SourceError(f"{files[0]}: tensor {mod + '.lora_B.weight'!r} is missing")
        A, B = lora[k].float(), lora[b_key].float()
        if f"{mod}.weight" not in weights:
            raise SourceError(f"{files[0]}: LoRA on {mod!r}, which neither the base nor "
                              "non_lora_trainables has")
        W = weights[f"{mod}.weight"]
        if A.shape[0] != r or B.shape[1] != r or (B.shape[0], A.shape[1]) != tuple(W.shape):
            raise SourceError(f"{files[0]}: LoRA of {mod!r} has shapes {tuple(A.shape)}, "
                              f"{tuple(B.shape)} for a weight {tuple(W.shape)} at r={r}")
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise SourceError(f"{files[0]}: LoRA of {mod!r} is not finite")
        weights[f"{mod}.weight"] = W.float() + scaling * (B @ A)
        merged += 1
    return merged


def read_stats(run: Path, state_dim: int, action_dim: int) -> dict[str, torch.Tensor]:
    path = run / "dataset_stats.pkl"
    if not path.is_file():
        raise SourceError(f"{path}: missing (the normalization statistics)")
    stats = load_numpy_pickle(path)
    if not isinstance(stats, dict):
        raise SourceError(f"{path}: not a dict of arrays")
    out = {}
    for ours, theirs, n in (("action_min", "action_min", action_dim),
                            ("action_max", "action_max", action_dim),
                            ("state_mean", "qpos_mean", state_dim),
                            ("state_std", "qpos_std", state_dim)):
        if theirs not in stats:
            raise SourceError(f"{path}: {theirs!r} is missing")
        v = torch.as_tensor(np.asarray(stats[theirs], dtype=np.float64)).float().reshape(-1)
        if v.numel() != n or not torch.isfinite(v).all():
            raise SourceError(f"{path}: {theirs!r} must be {n} finite values, got "
                              f"{tuple(v.shape)}")
        out[ours] = v
    if (out["action_max"] <= out["action_min"]).any() or (out["state_std"] <= 0).any():
        raise SourceError(f"{path}: action_max must exceed action_min and qpos_std be > 0")
    return out


def import_tinyvla(src: Path, base: Path | None = None, cameras: int | None = None
                   ) -> tuple[torch.nn.Module, SamplerConfig, dict]:
    """A TinyVLA run (or checkpoint) directory -> (the package's model, its sampler, meta)."""
    src = Path(src)
    run, ckpt = run_dir(src), checkpoint_dir(src)
    cfg_path = run / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{cfg_path}: not readable JSON ({e})") from e
    tok_path = run / "tokenizer.json"
    if not tok_path.is_file():
        raise SourceError(f"{tok_path}: missing (the run's tokenizer)")
    try:
        tok_text = tok_path.read_text()
        PromptText(PROMPT, tok_text)
    except (ValueError, UnicodeDecodeError) as e:
        raise SourceError(f"{tok_path}: {e}") from e
    weights: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for f in _base_files(Path(base)) if base else []:
        for k, v in load_tensors(f).items():
            weights[k], origin[k] = v, f
    nl = ckpt / "non_lora_trainables.bin"
    if nl.is_file():
        for k, v in load_tensors(nl).items():
            k = k[len(PREFIX):] if k.startswith(PREFIX) else k
            if "lora_" not in k:
                weights[k], origin[k] = v, nl
    if "gpt_neox.embed_in.weight" not in weights:
        raise SourceError(f"{ckpt}: the run's files hold no base weights (no "
                          "gpt_neox.embed_in.weight): give the model it was trained from with "
                          "--base" + (f" ({base} has none either)" if base else ""))
    merged = merge_lora(weights, ckpt)
    source = TensorSource()
    for f in sorted(set(origin.values())):
        source.add_tensors({k: v for k, v in weights.items() if origin[k] == f}, f)
    mcfg, scfg, n_vit = model_config(cfg, cfg_path, source, cameras)
    for i in range(mcfg.vit_layers, n_vit):
        source.ignore_prefix(f"gpt_neox.vision_tower.vision_model.encoder.layers.{i}.",
                             "after LLaVA's select layer: never computed")
    for k in list(source.tensors):
        if re.search(r"(attention\.(bias|masked_bias)|rotary_emb\.inv_freq|"
                     r"embeddings\.position_ids)$", k):
            source.ignore(k, "a buffer the model recomputes")
    if source.has("embed_out.weight"):
        source.ignore("embed_out.weight", "the base LM's text head: a policy emits no text")
    model = build_model(mcfg)
    stats = read_stats(run, mcfg.state_dim, mcfg.action_dim)
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("normalizer."):
            state[k] = stats[k.split(".", 1)[1]]
        elif k == "camera_embed":
            state[k] = torch.zeros_like(v)          # TinyVLA concatenates cameras unmarked
        else:
            state[k] = source.take(source_name(k), tuple(v.shape)).to(v.dtype)
    source.check_all_accounted()
    check_state_dict(model.state_dict(), state, f"import of {src}")
    model.load_state_dict(state, strict=True)
    model.attach_tokenizer(tok_text)
    return model.eval(), scfg, {"source": "tinyvla", "source_dir": str(run.resolve()),
                                "checkpoint": ckpt.name, "lora_modules_merged": merged,
                                "base": str(Path(base).resolve()) if base else None,
                                "cameras": ["images", "images_r", "images_top"][:mcfg.num_cameras]}
