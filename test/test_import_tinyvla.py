"""Importing a TinyVLA run directory: parity with the source's own computation.

The run directory is synthetic, in exactly TinyVLA's layout (config.json of llava_pythia,
dataset_stats.pkl, tokenizer.json, checkpoint-N/ with peft's adapter files and
non_lora_trainables.bin, and the base model the run was trained from), tiny, with random
weights, its tensor names those of TinyVLA's modules (LlavaPythiaForCausalLM: gpt_neox.*,
gpt_neox.vision_tower.vision_model.* (CLIP), gpt_neox.mm_projector.*, embed_out.* (the
droid_diffusion ConditionalUnet1D)). The reference forward is written here, functionally, over
those names, as TinyVLA's code computes it (LoRA merged as peft merges it); it never goes
through the package's modules.
"""
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_rl_ready
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tinyvla_grpo_ros.core.checkpoint import load_checkpoint
from tinyvla_grpo_ros.core.model import Observation
from tinyvla_grpo_ros.core.safe_load import SourceError
from tinyvla_grpo_ros.core.sampler import DiffusionSampler
from tinyvla_grpo_ros.import_policy import main as import_main
from tinyvla_grpo_ros.importers.tinyvla import CLIP_MEAN, CLIP_STD, PROMPT, import_tinyvla

C = dict(S=16, patch=8, vit=32, vit_layers=3, vit_heads=2, select=-2, D=32, layers=2, heads=4,
         inter=64, vocab=300, rotary_pct=0.25, down=[16, 32], dsed=16, k=5, Da=3, Ds=5,
         chunk=8, cams=2, r=4, alpha=16)
LORA_TARGETS = ("attention.query_key_value", "mlp.dense_h_to_4h")


# ----- the source: TinyVLA's tensor names and shapes -----
def clip_names(c) -> dict[str, tuple]:
    v, p = c["vit"], "gpt_neox.vision_tower.vision_model."
    n = {p + "embeddings.class_embedding": (v,),
         p + "embeddings.patch_embedding.weight": (v, 3, c["patch"], c["patch"]),
         p + "embeddings.position_embedding.weight": ((c["S"] // c["patch"]) ** 2 + 1, v),
         p + "pre_layrnorm.weight": (v,), p + "pre_layrnorm.bias": (v,),
         p + "post_layernorm.weight": (v,), p + "post_layernorm.bias": (v,)}
    for i in range(c["vit_layers"]):
        q = f"{p}encoder.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            n |= {f"{q}self_attn.{m}.weight": (v, v), f"{q}self_attn.{m}.bias": (v,)}
        n |= {q + "mlp.fc1.weight": (4 * v, v), q + "mlp.fc1.bias": (4 * v,),
              q + "mlp.fc2.weight": (v, 4 * v), q + "mlp.fc2.bias": (v,)}
        for ln in ("layer_norm1", "layer_norm2"):
            n |= {f"{q}{ln}.weight": (v,), f"{q}{ln}.bias": (v,)}
    return n


def neox_names(c) -> dict[str, tuple]:
    D, p = c["D"], "gpt_neox."
    n = {p + "embed_in.weight": (c["vocab"], D), p + "final_layer_norm.weight": (D,),
         p + "final_layer_norm.bias": (D,)}
    for i in range(c["layers"]):
        q = f"{p}layers.{i}."
        n |= {q + "attention.query_key_value.weight": (3 * D, D),
              q + "attention.query_key_value.bias": (3 * D,),
              q + "attention.dense.weight": (D, D), q + "attention.dense.bias": (D,),
              q + "mlp.dense_h_to_4h.weight": (c["inter"], D),
              q + "mlp.dense_h_to_4h.bias": (c["inter"],),
              q + "mlp.dense_4h_to_h.weight": (D, c["inter"]), q + "mlp.dense_4h_to_h.bias": (D,)}
        for ln in ("input_layernorm", "post_attention_layernorm"):
            n |= {f"{q}{ln}.weight": (D,), f"{q}{ln}.bias": (D,)}
    return n


def resblock(q, cin, cout, cond, k) -> dict[str, tuple]:
    n = {}
    for b, ci in ((0, cin), (1, cout)):
        n |= {f"{q}blocks.{b}.block.0.weight": (cout, ci, k), f"{q}blocks.{b}.block.0.bias":
              (cout,), f"{q}blocks.{b}.block.1.weight": (cout,),
              f"{q}blocks.{b}.block.1.bias": (cout,)}
    n |= {q + "cond_encoder.1.weight": (2 * cout, cond), q + "cond_encoder.1.bias": (2 * cout,)}
    if cin != cout:
        n |= {q + "residual_conv.weight": (cout, cin, 1), q + "residual_conv.bias": (cout,)}
    return n


def head_names(c) -> dict[str, tuple]:
    h, D, dsed, k = "embed_out.", c["D"], c["dsed"], c["k"]
    cond = dsed + D
    n = {h + "norm_after_pool.weight": (D,), h + "norm_after_pool.bias": (D,),
         h + "combine.weight": (D, D + c["Ds"]), h + "combine.bias": (D,),
         h + "diffusion_step_encoder.1.weight": (4 * dsed, dsed),
         h + "diffusion_step_encoder.1.bias": (4 * dsed,),
         h + "diffusion_step_encoder.3.weight": (dsed, 4 * dsed),
         h + "diffusion_step_encoder.3.bias": (dsed,)}
    in_out = [(c["Da"], c["down"][0])] + list(zip(c["down"][:-1], c["down"][1:]))
    for i, (a, b) in enumerate(in_out):
        n |= resblock(f"{h}down_modules.{i}.0.", a, b, cond, k)
        n |= resblock(f"{h}down_modules.{i}.1.", b, b, cond, k)
        if i < len(in_out) - 1:
            n |= {f"{h}down_modules.{i}.2.conv.weight": (b, b, 3),
                  f"{h}down_modules.{i}.2.conv.bias": (b,)}
    for j in range(2):
        n |= resblock(f"{h}mid_modules.{j}.", c["down"][-1], c["down"][-1], cond, k)
    for i, (out, inn) in enumerate(reversed(in_out[1:])):
        n |= resblock(f"{h}up_modules.{i}.0.", inn * 2, out, cond, k)
        n |= resblock(f"{h}up_modules.{i}.1.", out, out, cond, k)
        n |= {f"{h}up_modules.{i}.2.conv.weight": (out, out, 4),
              f"{h}up_modules.{i}.2.conv.bias": (out,)}
    d0 = c["down"][0]
    n |= {h + "final_conv.0.block.0.weight": (d0, d0, k), h + "final_conv.0.block.0.bias": (d0,),
          h + "final_conv.0.block.1.weight": (d0,), h + "final_conv.0.block.1.bias": (d0,),
          h + "final_conv.1.weight": (c["Da"], d0, 1), h + "final_conv.1.bias": (c["Da"],)}
    return n


def random(names: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in names.items():
        fan = max(1, math.prod(shape[1:]))
        norm = k.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight",
                           "layer_norm2.weight", "pool.weight", "block.1.weight"))
        out[k] = torch.randn(shape, generator=g) / math.sqrt(fan) * (0.1 if norm else 1.0) + (
            1.0 if norm else 0.0)
    return out


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=C["vocab"], show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PROMPT.replace("{instruction}", t) for t in
                             ("press the button", "push the puck to the goal", "reach")] * 3,
                            trainer)
    return tok


def source_tensors(c=C):
    """(base model tensors, non_lora_trainables, adapter_model) in TinyVLA's names."""
    base = random(clip_names(c) | neox_names(c), seed=0)
    base["embed_out.weight"] = torch.zeros(c["vocab"], c["D"])       # the base LM's text head
    for i in range(c["layers"]):                                     # old transformers' buffers
        base[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(1)
    proj = random({"gpt_neox.mm_projector.0.weight": (c["D"], c["vit"]),
                   "gpt_neox.mm_projector.0.bias": (c["D"],),
                   "gpt_neox.mm_projector.2.weight": (c["D"], c["D"]),
                   "gpt_neox.mm_projector.2.bias": (c["D"],)}, seed=1)
    g = torch.Generator().manual_seed(3)
    trained = proj | random(head_names(c), seed=2) | {  # a norm trained beside the LoRA
        "gpt_neox.layers.0.input_layernorm.weight": torch.rand(c["D"], generator=g) + 0.5}
    lora = {}
    for i in range(c["layers"]):
        for m in LORA_TARGETS:
            out, inn = base[f"gpt_neox.layers.{i}.{m}.weight"].shape
            lora[f"gpt_neox.layers.{i}.{m}.lora_A.weight"] = torch.randn(c["r"], inn,
                                                                         generator=g) * 0.1
            lora[f"gpt_neox.layers.{i}.{m}.lora_B.weight"] = torch.randn(out, c["r"],
                                                                         generator=g) * 0.1
    return base, trained, lora


def stats(c=C):
    g = np.random.default_rng(4)
    amin = -g.random(c["Da"]).astype(np.float32) - 0.2
    return {"action_min": amin, "action_max": amin + 0.5 + g.random(c["Da"]).astype(np.float32),
            "action_mean": np.zeros(c["Da"], np.float32), "action_std": np.ones(c["Da"],
                                                                                np.float32),
            "qpos_mean": g.standard_normal(c["Ds"]).astype(np.float32),
            "qpos_std": (g.random(c["Ds"]) + 0.5).astype(np.float32),
            "example_qpos": g.standard_normal((4, c["Ds"])).astype(np.float32)}


def write_run(tmp, c=C, edit=None, config_overrides=None):
    """tmp/run (the run directory) and tmp/base (the model it was trained from)."""
    edit = edit or {}
    base, trained, lora = source_tensors(c)
    for part, d in (("base", base), ("trained", trained), ("lora", lora)):
        edit.get(part, lambda x: None)(d)
    run, ckpt, bdir = tmp / "run", tmp / "run" / "checkpoint-200", tmp / "base"
    for d in (ckpt, bdir, run / "checkpoint-100"):
        d.mkdir(parents=True, exist_ok=True)
    save_file(base, str(bdir / "model.safetensors"))
    torch.save({"base_model.model." + k: v for k, v in trained.items()},
               ckpt / "non_lora_trainables.bin")
    torch.save({"base_model.model." + k: v for k, v in lora.items()}, ckpt / "adapter_model.bin")
    (ckpt / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": c["r"], "lora_alpha": c["alpha"], "lora_dropout": 0.05,
        "bias": "none", "fan_in_fan_out": False, "task_type": "CAUSAL_LM",
        "target_modules": ["query_key_value", "dense_h_to_4h"]}))
    with open(run / "dataset_stats.pkl", "wb") as f:
        pickle.dump(stats(c), f)
    build_tokenizer().save(str(run / "tokenizer.json"))
    config = {"model_type": "llava_pythia", "architectures": ["LlavaPythiaForCausalLM"],
              "hidden_size": c["D"], "num_hidden_layers": c["layers"],
              "num_attention_heads": c["heads"], "intermediate_size": c["inter"],
              "vocab_size": c["vocab"], "rotary_pct": c["rotary_pct"],
              "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
              "hidden_act": "gelu", "max_position_embeddings": 256,
              "action_head_type": "droid_diffusion", "action_dim": c["Da"],
              "state_dim": c["Ds"], "chunk_size": c["chunk"], "concat": "token_cat",
              "mm_use_im_start_end": False,
              "vision_config": {"vision_tower": {
                  "hidden_size": c["vit"], "intermediate_size": 4 * c["vit"],
                  "num_hidden_layers": c["vit_layers"], "num_attention_heads": c["vit_heads"],
                  "image_size": c["S"], "patch_size": c["patch"], "hidden_act": "quick_gelu",
                  "layer_norm_eps": 1e-5, "mm_vision_select_feature": "patch",
                  "mm_vision_select_layer": c["select"],
                  "vision_model_name_or_path": "openai/clip-vit-large-patch14-336"},
                  "mm_projector": {"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": c["vit"],
                                   "hidden_size": c["D"]}}} | (config_overrides or {})
    (run / "config.json").write_text(json.dumps(config))
    return run, bdir


# ----- the reference: TinyVLA's computation over its own tensor names -----
def merged(c=C) -> dict[str, torch.Tensor]:
    base, trained, lora = source_tensors(c)
    P = dict(base) | trained
    for k in [k for k in lora if ".lora_A." in k]:
        mod = k.split(".lora_A.")[0]
        P[mod + ".weight"] = P[mod + ".weight"] + c["alpha"] / c["r"] * (
            lora[mod + ".lora_B.weight"] @ lora[k])
    return P


def ln(P, p, x):
    return F.layer_norm(x, x.shape[-1:], P[p + ".weight"], P[p + ".bias"], eps=1e-5)


def lin(P, p, x):
    return F.linear(x, P[p + ".weight"], P[p + ".bias"])


def mha(q, k, v, heads, mask=None):
    B, N, D = q.shape
    hs = D // heads
    q, k, v = (t.reshape(B, -1, heads, hs).transpose(1, 2) for t in (q, k, v))
    w = q @ k.transpose(-1, -2) / math.sqrt(hs)
    if mask is not None:
        w = w.masked_fill(~mask, float("-inf"))
    return (w.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)


def ref_clip(P, x, c):
    """CLIPVisionTower: hidden_states[select_layer], patch tokens, then the mm_projector."""
    p = "gpt_neox.vision_tower.vision_model."
    e = F.conv2d(x, P[p + "embeddings.patch_embedding.weight"], stride=c["patch"])
    e = e.flatten(2).transpose(1, 2)
    cls = P[p + "embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    h = torch.cat([cls, e], 1) + P[p + "embeddings.position_embedding.weight"]
    hidden = [ln(P, p + "pre_layrnorm", h)]
    for i in range(c["vit_layers"]):
        q, h = f"{p}encoder.layers.{i}.", hidden[-1]
        a = ln(P, q + "layer_norm1", h)
        h = h + lin(P, q + "self_attn.out_proj", mha(lin(P, q + "self_attn.q_proj", a),
                                                       lin(P, q + "self_attn.k_proj", a),
                                                       lin(P, q + "self_attn.v_proj", a),
                                                       c["vit_heads"]))
        m = lin(P, q + "mlp.fc1", ln(P, q + "layer_norm2", h))
        hidden.append(h + lin(P, q + "mlp.fc2", m * torch.sigmoid(1.702 * m)))
    feats = hidden[c["select"]][:, 1:]
    return lin(P, "gpt_neox.mm_projector.2", F.gelu(lin(P, "gpt_neox.mm_projector.0", feats)))


def rope(x, n_rot, base=10000):
    N = x.shape[2]
    inv = 1.0 / base ** (torch.arange(0, n_rot, 2).float() / n_rot)
    f = torch.arange(N).float()[:, None] * inv[None]
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
    r, rest = x[..., :n_rot], x[..., n_rot:]
    half = torch.cat([-r[..., n_rot // 2:], r[..., :n_rot // 2]], -1)
    return torch.cat([r * cos + half * sin, rest], -1)


def ref_neox(P, emb, mask, c):
    """GPTNeoXModel with parallel residual; mask (B, N) bool of attended keys."""
    B, N, D = emb.shape
    H, hs = c["heads"], D // c["heads"]
    allowed = torch.tril(torch.ones(N, N, dtype=torch.bool))[None, None] & mask[:, None, None]
    h = emb
    for i in range(c["layers"]):
        q = f"gpt_neox.layers.{i}."
        qkv = lin(P, q + "attention.query_key_value", ln(P, q + "input_layernorm", h))
        qkv = qkv.reshape(B, N, H, 3 * hs).transpose(1, 2)
        qs, ks, vs = qkv[..., :hs], qkv[..., hs:2 * hs], qkv[..., 2 * hs:]
        n_rot = int(hs * c["rotary_pct"])
        qs, ks = rope(qs, n_rot), rope(ks, n_rot)
        w = (qs @ ks.transpose(-1, -2) / math.sqrt(hs)).masked_fill(~allowed, float("-inf"))
        att = (w.softmax(-1) @ vs).transpose(1, 2).reshape(B, N, D)
        mlp = lin(P, q + "mlp.dense_4h_to_h", F.gelu(lin(P, q + "mlp.dense_h_to_4h",
                                                        ln(P, q + "post_attention_layernorm", h))))
        h = h + lin(P, q + "attention.dense", att) + mlp
    return ln(P, "gpt_neox.final_layer_norm", h)


def ref_block(P, q, x, k):
    x = F.conv1d(x, P[q + ".block.0.weight"], P[q + ".block.0.bias"], padding=k // 2)
    return F.mish(F.group_norm(x, 8, P[q + ".block.1.weight"], P[q + ".block.1.bias"]))


def ref_res(P, q, x, cond, k):
    out = ref_block(P, q + "blocks.0", x, k)
    emb = lin(P, q + "cond_encoder.1", F.mish(cond))
    emb = emb.reshape(emb.shape[0], 2, out.shape[1], 1)
    out = ref_block(P, q + "blocks.1", emb[:, 0] * out + emb[:, 1], k)
    res = F.conv1d(x, P[q + "residual_conv.weight"], P[q + "residual_conv.bias"]) \
        if q + "residual_conv.weight" in P else x
    return out + res


def ref_unet(P, x, t, hidden, state, c):
    """droid_unet_diffusion.ConditionalUnet1D.forward (its step embedding in bfloat16)."""
    h_ = "embed_out."
    g = ln(P, h_ + "norm_after_pool", hidden.permute(0, 2, 1).mean(-1))
    g = lin(P, h_ + "combine", torch.cat([g, state], -1))
    half = c["dsed"] // 2
    freq = torch.exp(torch.arange(half, dtype=torch.bfloat16) * -(math.log(10000) / (half - 1)))
    arg = t[:, None] * freq[None]
    temb = torch.cat([arg.sin(), arg.cos()], -1).float()
    temb = lin(P, h_ + "diffusion_step_encoder.3",
               F.mish(lin(P, h_ + "diffusion_step_encoder.1", temb)))
    cond = torch.cat([temb, g], -1)
    h, skips, k, n = x.transpose(1, 2), [], c["k"], len(c["down"])
    for i in range(n):
        h = ref_res(P, f"{h_}down_modules.{i}.1.",
                    ref_res(P, f"{h_}down_modules.{i}.0.", h, cond, k), cond, k)
        skips.append(h)
        if i < n - 1:
            h = F.conv1d(h, P[f"{h_}down_modules.{i}.2.conv.weight"],
                         P[f"{h_}down_modules.{i}.2.conv.bias"], stride=2, padding=1)
    for j in range(2):
        h = ref_res(P, f"{h_}mid_modules.{j}.", h, cond, k)
    for i in range(n - 1):
        h = torch.cat([h, skips.pop()], 1)
        h = ref_res(P, f"{h_}up_modules.{i}.1.", ref_res(P, f"{h_}up_modules.{i}.0.", h, cond, k),
                    cond, k)
        h = F.conv_transpose1d(h, P[f"{h_}up_modules.{i}.2.conv.weight"],
                               P[f"{h_}up_modules.{i}.2.conv.bias"], stride=2, padding=1)
    h = ref_block(P, h_ + "final_conv.0", h, k)
    return F.conv1d(h, P[h_ + "final_conv.1.weight"], P[h_ + "final_conv.1.bias"]).transpose(1, 2)


def ref_eps(P, images, state, instruction, x, t, c=C):
    """LlavaPythiaForCausalLM with the droid_diffusion head: eps for x at t."""
    B = images.shape[0]
    tok = build_tokenizer()
    before, after = PROMPT.replace("{instruction}", instruction).split("<image>")
    ids_a, ids_b = tok.encode(before).ids, tok.encode(after).ids      # tokenizer_image_token
    feats = []
    for i in range(c["cams"]):                                       # images, images_r
        px = images[:, i].permute(0, 3, 1, 2).float() / 255.0
        px = (px - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        feats.append(ref_clip(P, px, c))
    E = P["gpt_neox.embed_in.weight"]
    emb = torch.cat([E[ids_a].expand(B, -1, -1), *feats, E[ids_b].expand(B, -1, -1)], 1)
    ids = ids_a + [0] * sum(f.shape[1] for f in feats) + ids_b
    mask = torch.tensor([i != 1 for i in ids]).expand(B, -1)          # pad_token_id 1
    hidden = ref_neox(P, emb, mask, c)
    st = stats(c)
    s = (state - torch.from_numpy(st["qpos_mean"])) / torch.from_numpy(st["qpos_std"])
    return ref_unet(P, x, t, hidden, s, c)


def obs_for(B=3, seed=0, instruction="press the button"):
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 256, (B, C["cams"], C["S"], C["S"], 3), generator=g,
                                     dtype=torch.uint8), torch.randn((B, C["Ds"]), generator=g),
                       [instruction] * B)


def test_imported_noise_prediction_matches_tinyvlas_computation(tmp_path):
    run, base = write_run(tmp_path)
    model, scfg, meta = import_tinyvla(run, base=base)
    assert meta["checkpoint"] == "checkpoint-200" and meta["lora_modules_merged"] == 4
    P = merged()
    for instruction in ("press the button", "push the puck to the goal"):
        obs = obs_for(instruction=instruction)
        x = torch.randn(3, C["chunk"], C["Da"], generator=torch.Generator().manual_seed(2))
        t = torch.tensor([0, 37, 99])
        with torch.no_grad():
            ours = model(x, t, model.encode(obs))
            ref = ref_eps(P, obs.images, obs.state, instruction, x, t)
        assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()
    assert (scfg.scheduler, scfg.num_inference_steps, scfg.executed_steps) == ("ddim", 10, 4)
    # frames are prepared as LLaVA's: padded square with CLIP's mean, resized bicubic
    assert (model.config.image_pad, model.config.image_resample) == ("mean", "bicubic")
    # actions unnormalize with dataset_stats.pkl's action min/max
    sampler = DiffusionSampler(model.config, scfg, sft_model=model)
    chunk = sampler.sample(model, obs_for(), deterministic=True)
    lo, hi = (torch.from_numpy(stats()[k]) for k in ("action_min", "action_max"))
    assert torch.allclose(chunk.actions, (chunk.chain[:, -1] + 1) / 2 * (hi - lo) + lo,
                          atol=1e-6)


def test_sampling_rescoring_and_one_grpo_update_touch_only_the_adapter(tmp_path):
    run, base = write_run(tmp_path)
    model, scfg, _ = import_tinyvla(run / "checkpoint-200", base=base)
    scfg = type(scfg)(**{**scfg.to_dict(), "num_inference_steps": 4, "stochastic_steps": 2})
    assert_rl_ready(model, scfg, obs_for(B=2), "press the button")


def test_the_cli_writes_a_checkpoint_with_its_tokenizer_that_loads_back(tmp_path):
    run, base = write_run(tmp_path)
    assert import_main([str(run), str(tmp_path / "ckpt"), "--base", str(base)]) == 0
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    model, scfg, meta = load_checkpoint(tmp_path / "ckpt")
    direct, _, _ = import_tinyvla(run, base=base)
    obs, x, t = obs_for(), torch.randn(3, C["chunk"], C["Da"]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        assert torch.equal(model(x, t, model.encode(obs)), direct(x, t, direct.encode(obs)))
    assert meta["source"] == "tinyvla" and meta["cameras"] == ["images", "images_r"]


def _nan(d):
    d["embed_out.final_conv.1.weight"] = d["embed_out.final_conv.1.weight"].clone().fill_(
        float("nan"))


@pytest.mark.parametrize("edit,config,words", [
    ({}, {"action_head_type": "act"}, "action_head_type = 'act' is not supported"),
    ({}, {"mm_use_im_start_end": True}, "mm_use_im_start_end = True"),
    ({}, {"vision_config": {"vision_tower": {"vision_model_name_or_path": "google/siglip"},
                            "mm_projector": {}}}, "only CLIP towers"),
    ({"trained": _nan}, {}, "tensor 'embed_out.final_conv.1.weight' is not finite"),
    ({"base": lambda d: d.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.bias")}, {},
     "tensor 'gpt_neox.layers.1.mlp.dense_4h_to_h.bias' is missing"),
    ({"trained": lambda d: d.update({"embed_out.combine.weight": torch.zeros(3, 3)})}, {},
     "tensor 'embed_out.combine.weight' has shape (3, 3), the model needs (32, 37)"),
    ({"trained": lambda d: d.update({"gpt_neox.something_new.weight": torch.zeros(2)})}, {},
     "neither used nor known to be ignorable, e.g. ['gpt_neox.something_new.weight']"),
    ({"lora": lambda d: d.pop("gpt_neox.layers.0.mlp.dense_h_to_4h.lora_B.weight")}, {},
     "'gpt_neox.layers.0.mlp.dense_h_to_4h.lora_B.weight' is missing"),
], ids=["head", "im_start_end", "siglip", "nan", "missing", "shape", "extra", "lora"])
def test_what_cannot_be_imported_is_refused_by_name_and_nothing_is_written(tmp_path, edit,
                                                                           config, words):
    run, base = write_run(tmp_path, edit=edit, config_overrides=config)
    with pytest.raises(SourceError) as e:
        import_tinyvla(run, base=base)
    assert words in str(e.value)
    assert import_main([str(run), str(tmp_path / "ckpt"), "--base", str(base)]) == 2
    assert not (tmp_path / "ckpt").exists()


def test_a_stats_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    run, base = write_run(tmp_path)

    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "pwned"),))
    with open(run / "dataset_stats.pkl", "wb") as f:
        pickle.dump({"action_min": Evil()}, f)
    with pytest.raises(SourceError, match="dataset_stats.pkl: refused to load builtins.exec"):
        import_tinyvla(run, base=base)
    assert not (tmp_path / "pwned").exists()


def test_policy_node_runs_an_imported_tinyvla_run_over_dds(tmp_path):
    """policy_node loads the imported checkpoint with its BPE tokenizer and samples chunks for
    the sim's 9 joints and 4 end-effector actions from the camera's frames."""
    from ros_harness import chunks_from_policy_node
    c = dict(C, Ds=9, Da=4, S=32, cams=1)
    run, base = write_run(tmp_path, c, config_overrides={"concat": "None"})
    assert import_main([str(run), str(tmp_path / "ckpt"), "--base", str(base)]) == 0
    m = chunks_from_policy_node(tmp_path, tmp_path / "ckpt", 4, image_size=32)[-1]
    assert (m.horizon, m.action_dim, m.executed_steps) == (8, 4, 4)
    assert m.scheduler == "ddim" and m.num_inference_steps == 10 and len(m.log_probs) == 3
    assert all(math.isfinite(v) for v in m.actions)


def test_a_run_without_its_base_model_asks_for_it(tmp_path):
    run, base = write_run(tmp_path)
    with pytest.raises(SourceError, match="give the model it was trained from with --base"):
        import_tinyvla(run)
    assert import_main([str(run), str(tmp_path / "ckpt")]) == 2


def test_an_unreadable_tokenizer_is_named_on_import_and_on_load(tmp_path):
    run, base = write_run(tmp_path)
    assert import_main([str(run), str(tmp_path / "ckpt"), "--base", str(base)]) == 0
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{torn")
    with pytest.raises(ValueError, match="ckpt: tokenizer.json: not a tokenizers"):
        load_checkpoint(tmp_path / "ckpt")
    (run / "tokenizer.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(SourceError, match="tokenizer.json: "):
        import_tinyvla(run, base=base)
    assert import_main([str(run), str(tmp_path / "ckpt2"), "--base", str(base)]) == 2
    assert not (tmp_path / "ckpt2").exists()
