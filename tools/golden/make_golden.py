#!/usr/bin/env python3
"""Golden-reference generator for tandem's DeepSeek-V3 / V2 engine tests.

For every variant this script
  1. writes a config.json in the layout of the published DeepSeek config (same keys, same
     formatting) with tiny dimensions,
  2. draws deterministic random weights (fixed seed), rounds them to bf16 and writes them as a
     checkpoint in the *official* DeepSeek tensor layout (per-expert tensors, two shards plus
     model.safetensors.index.json; FP8 block-quantized linears for v3_fp8),
  3. builds the Hugging Face transformers model (DeepseekV3ForCausalLM / DeepseekV2ForCausalLM)
     in float32 with eager attention, loads exactly the stored values into it and runs the
     reference forward on two prompts plus an 8-token greedy continuation,
  4. verifies the checkpoint layout by loading the written directory back with
     AutoModelForCausalLM.from_pretrained and comparing logits,
  5. writes golden.safetensors (inputs, logits, greedy tokens, and debugging extras).

Usage (from the repository root):
    python3 tools/golden/make_golden.py [--out tests/data/golden] [--device cpu]

Everything is deterministic: rerunning produces bit-identical tensors (only the date in the
metadata changes). Runs on CPU by default; --device cuda works too (TF32 is disabled), but the
committed goldens were made on CPU.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parents[1]
BASE_CONFIG_DIR = SCRIPT_DIR / "base_configs"

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
FP8_BLOCK = 128
PROMPT_LENGTHS = (24, 9)
GREEDY_STEPS = 8

# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------

V3_OVERRIDES = OrderedDict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    moe_intermediate_size=96,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=192,
    kv_lora_rank=128,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    n_routed_experts=16,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    n_shared_experts=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
    max_position_embeddings=4096,
    rope_theta=10000,
    rope_scaling=OrderedDict(
        type="yarn",
        factor=4,
        original_max_position_embeddings=1024,
        beta_fast=32,
        beta_slow=1,
        mscale=1.0,
        mscale_all_dim=1.0,
    ),
    rms_norm_eps=1e-6,
    num_nextn_predict_layers=0,
    torch_dtype="bfloat16",
)

V2LITE_OVERRIDES = OrderedDict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    moe_intermediate_size=96,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=None,
    kv_lora_rank=128,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    n_routed_experts=16,
    num_experts_per_tok=4,
    n_group=1,
    topk_group=1,
    topk_method="greedy",
    scoring_func="softmax",
    norm_topk_prob=False,
    routed_scaling_factor=1.0,
    n_shared_experts=2,
    rope_scaling=OrderedDict(
        type="yarn",
        factor=40,
        original_max_position_embeddings=4096,
        beta_fast=32,
        beta_slow=1,
        mscale=0.707,
        mscale_all_dim=0.707,
    ),
    max_position_embeddings=163840,
    # The published bos/eos ids (100000/100001) lie outside the tiny vocabulary; use in-vocab ids.
    bos_token_id=0,
    eos_token_id=1,
)

V2LITE_GROUP_OVERRIDES = OrderedDict(V2LITE_OVERRIDES)
V2LITE_GROUP_OVERRIDES.update(topk_method="group_limited_greedy", n_group=4, topk_group=2)

FP8_QUANTIZATION_CONFIG = OrderedDict(
    activation_scheme="dynamic",
    fmt="e4m3",
    quant_method="fp8",
    weight_block_size=[FP8_BLOCK, FP8_BLOCK],
)

# name -> (base config file, overrides, weight seed, fp8?, weights shared with another variant)
VARIANTS = OrderedDict(
    v3=dict(base="deepseek-v3.config.json", overrides=V3_OVERRIDES, weight_seed=3003, fp8=False,
            weights_from=None),
    v2lite=dict(base="deepseek-v2-lite.config.json", overrides=V2LITE_OVERRIDES, weight_seed=2002,
                fp8=False, weights_from=None),
    # Same bf16 weights as v3, with the linear weights block-quantized to FP8.
    v3_fp8=dict(base="deepseek-v3.config.json", overrides=V3_OVERRIDES, weight_seed=3003, fp8=True,
                weights_from=None),
    # Same weights as v2lite (the checkpoint files are symlinks to ../v2lite); only routing differs.
    v2lite_group=dict(base="deepseek-v2-lite.config.json", overrides=V2LITE_GROUP_OVERRIDES,
                      weight_seed=2002, fp8=False, weights_from="v2lite"),
)

PROMPT_SEED = 12345


# ----------------------------------------------------------------------------------------------
# config.json in the published formatting
# ----------------------------------------------------------------------------------------------

def build_config(base_name, overrides, fp8):
    """Published config with overridden values; key order of the published file is kept."""
    with open(BASE_CONFIG_DIR / base_name) as f:
        cfg = json.load(f, object_pairs_hook=OrderedDict)
    for key, value in overrides.items():
        if key not in cfg:
            raise KeyError(f"override {key!r} is not a key of the published {base_name}")
        if isinstance(value, dict):
            # Keep the published key order inside nested dicts too.
            published = cfg[key]
            if set(published) != set(value):
                raise KeyError(f"{key}: keys {sorted(value)} differ from published {sorted(published)}")
            value = OrderedDict((k, value[k]) for k in published)
        cfg[key] = value
    if fp8:
        cfg["quantization_config"] = OrderedDict(FP8_QUANTIZATION_CONFIG)
        cfg = OrderedDict(sorted(cfg.items()))  # the published file is sorted by key
    else:
        cfg.pop("quantization_config", None)
    return cfg


def _json_scalar(v):
    return json.dumps(v)


def _json_value(v, indent):
    if isinstance(v, dict):
        pad = " " * (indent + 2)
        items = [f'{pad}"{k}": {_json_value(x, indent + 2)}' for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_json_scalar(x) for x in v) + "]"
    return _json_scalar(v)


def format_config(cfg):
    """Same style as the published files: 2-space indent, inline lists, trailing newline."""
    return _json_value(cfg, 0) + "\n"


def write_config(directory, cfg):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(format_config(cfg))


# ----------------------------------------------------------------------------------------------
# Weights in the official DeepSeek layout
# ----------------------------------------------------------------------------------------------

def official_specs(cfg):
    """(name, shape, kind) for every checkpoint tensor, in checkpoint order."""
    hidden = cfg["hidden_size"]
    vocab = cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    nope, rope, vdim = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    q_rank, kv_rank = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    inter, moe_inter = cfg["intermediate_size"], cfg["moe_intermediate_size"]
    experts, shared = cfg["n_routed_experts"], cfg["n_shared_experts"]
    is_v3 = cfg["model_type"] == "deepseek_v3"
    assert cfg.get("moe_layer_freq", 1) == 1

    specs = [("model.embed_tokens.weight", (vocab, hidden), "embed")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs.append((p + "input_layernorm.weight", (hidden,), "norm"))
        a = p + "self_attn."
        if q_rank is None:
            specs.append((a + "q_proj.weight", (heads * (nope + rope), hidden), "linear"))
        else:
            specs.append((a + "q_a_proj.weight", (q_rank, hidden), "linear"))
            specs.append((a + "q_a_layernorm.weight", (q_rank,), "norm"))
            specs.append((a + "q_b_proj.weight", (heads * (nope + rope), q_rank), "linear"))
        specs.append((a + "kv_a_proj_with_mqa.weight", (kv_rank + rope, hidden), "linear"))
        specs.append((a + "kv_a_layernorm.weight", (kv_rank,), "norm"))
        specs.append((a + "kv_b_proj.weight", (heads * (nope + vdim), kv_rank), "linear"))
        specs.append((a + "o_proj.weight", (hidden, heads * vdim), "linear"))
        specs.append((p + "post_attention_layernorm.weight", (hidden,), "norm"))
        m = p + "mlp."
        if i < cfg["first_k_dense_replace"]:
            specs.append((m + "gate_proj.weight", (inter, hidden), "linear"))
            specs.append((m + "up_proj.weight", (inter, hidden), "linear"))
            specs.append((m + "down_proj.weight", (hidden, inter), "linear"))
        else:
            specs.append((m + "gate.weight", (experts, hidden), "router"))
            if is_v3:
                specs.append((m + "gate.e_score_correction_bias", (experts,), "bias"))
            for e in range(experts):
                x = f"{m}experts.{e}."
                specs.append((x + "gate_proj.weight", (moe_inter, hidden), "linear"))
                specs.append((x + "up_proj.weight", (moe_inter, hidden), "linear"))
                specs.append((x + "down_proj.weight", (hidden, moe_inter), "linear"))
            s = m + "shared_experts."
            specs.append((s + "gate_proj.weight", (moe_inter * shared, hidden), "linear"))
            specs.append((s + "up_proj.weight", (moe_inter * shared, hidden), "linear"))
            specs.append((s + "down_proj.weight", (hidden, moe_inter * shared), "linear"))
    specs.append(("model.norm.weight", (hidden,), "norm"))
    specs.append(("lm_head.weight", (vocab, hidden), "lm_head"))
    return specs


def make_weights(cfg, seed):
    """Deterministic, well-scaled random weights; bf16 except the fp32 score-correction bias."""
    g = torch.Generator().manual_seed(seed)
    hidden = cfg["hidden_size"]
    weights = OrderedDict()
    for name, shape, kind in official_specs(cfg):
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind in ("linear", "lm_head"):
            x = x / math.sqrt(shape[1])            # N(0, 1/fan_in)
        elif kind == "embed":
            pass                                   # N(0, 1)
        elif kind == "norm":
            x = 1.0 + 0.1 * x                      # 1 + 0.1 N(0, 1)
        elif kind == "router":
            x = x / math.sqrt(hidden)              # N(0, 1/hidden)
        elif kind == "bias":
            weights[name] = (0.1 * x).contiguous()  # N(0, 0.1^2), stays fp32
            continue
        else:
            raise ValueError(kind)
        weights[name] = x.to(torch.bfloat16).contiguous()
    return weights


def is_fp8_quantized(name):
    """Linear weights that the official FP8 checkpoint stores in e4m3."""
    if not name.endswith(".weight"):
        return False
    if ".self_attn." in name:
        return name.split(".")[-2] in ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa",
                                       "kv_b_proj", "o_proj")
    if ".mlp." in name:
        return name.split(".")[-2] in ("gate_proj", "up_proj", "down_proj")
    return False


def quantize_fp8_blockwise(w):
    """Block-wise e4m3 quantization, one fp32 scale per 128x128 block (partial blocks at the edges).

    Returns (q float8_e4m3fn [out, in], scale_inv fp32 [ceil(out/128), ceil(in/128)],
    dequantized fp32 [out, in] = q * scale_inv).
    """
    w = w.to(torch.float32)
    rows, cols = w.shape
    br, bc = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    padded = torch.zeros(br * FP8_BLOCK, bc * FP8_BLOCK, dtype=torch.float32)
    padded[:rows, :cols] = w
    blocks = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK)
    block_max = blocks.abs().amax(dim=(1, 3))
    scale_inv = block_max / FP8_MAX
    scale_inv = torch.where(scale_inv > 0, scale_inv, torch.ones_like(scale_inv))
    scaled = blocks / scale_inv[:, None, :, None]
    q = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    deq = q.to(torch.float32) * scale_inv[:, None, :, None]
    q = q.view(br * FP8_BLOCK, bc * FP8_BLOCK)[:rows, :cols].contiguous()
    deq = deq.view(br * FP8_BLOCK, bc * FP8_BLOCK)[:rows, :cols].contiguous()
    return q, scale_inv.contiguous(), deq


def to_fp8_checkpoint(weights):
    """(fp8 checkpoint dict, dequantized twin dict with fp32 dequantized linears)."""
    ckpt, twin = OrderedDict(), OrderedDict()
    for name, w in weights.items():
        if is_fp8_quantized(name):
            q, scale_inv, deq = quantize_fp8_blockwise(w)
            ckpt[name] = q
            ckpt[name + "_scale_inv"] = scale_inv  # "<module>.weight_scale_inv"
            twin[name] = deq
        else:
            ckpt[name] = w
            twin[name] = w
    return ckpt, twin


def write_checkpoint(directory, tensors, num_layers):
    """Two shards + model.safetensors.index.json, like the official (many-shard) checkpoints."""
    split_layer = (num_layers + 1) // 2

    def shard_of(name):
        if name.startswith("model.embed_tokens."):
            return 0
        if name.startswith("model.layers."):
            return 0 if int(name.split(".")[2]) < split_layer else 1
        return 1

    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    shards = [OrderedDict(), OrderedDict()]
    for name, t in tensors.items():
        shards[shard_of(name)][name] = t
    weight_map, total = {}, 0
    for fname, shard in zip(files, shards):
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files + ["model.safetensors.index.json"]


def to_hf_state_dict(official, cfg):
    """Official per-expert names -> transformers 5.x fused expert parameters.

    experts.gate_up_proj[e] = cat(experts.{e}.gate_proj, experts.{e}.up_proj) along the output dim
    ([E, 2*I, H], gate rows first), experts.down_proj[e] = experts.{e}.down_proj ([E, H, I]).
    """
    sd = OrderedDict()
    experts = cfg["n_routed_experts"]
    for name, t in official.items():
        if ".mlp.experts." not in name:
            sd[name] = t.to(torch.float32)
    for i in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        m = f"model.layers.{i}.mlp.experts."
        sd[m + "gate_up_proj"] = torch.stack([
            torch.cat([official[f"{m}{e}.gate_proj.weight"], official[f"{m}{e}.up_proj.weight"]], 0)
            for e in range(experts)]).to(torch.float32)
        sd[m + "down_proj"] = torch.stack(
            [official[f"{m}{e}.down_proj.weight"] for e in range(experts)]).to(torch.float32)
    return sd


# ----------------------------------------------------------------------------------------------
# Reference runs
# ----------------------------------------------------------------------------------------------

def prompts(vocab):
    g = torch.Generator().manual_seed(PROMPT_SEED)
    return [torch.randint(0, vocab, (n,), generator=g, dtype=torch.int64) for n in PROMPT_LENGTHS]


def build_model(config_dir, official, cfg, device):
    config = AutoConfig.from_pretrained(str(config_dir))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    sd = to_hf_state_dict(official, cfg)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    return model.to(device).eval()


@torch.no_grad()
def forward_logits(model, ids, device):
    out = model(input_ids=ids[None].to(device), use_cache=False)
    return out.logits[0].float().cpu()


class RouterProbe:
    """Captures each MoE router's (router_logits, top-k weights, top-k ids)."""

    def __init__(self, model):
        self.records, self.handles = {}, []
        for i, layer in enumerate(model.model.layers):
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and not isinstance(gate, torch.nn.Linear):
                self.handles.append(gate.register_forward_hook(self._hook(i)))

    def _hook(self, i):
        def fn(module, args, out):
            self.records[i] = tuple(t.detach().float().cpu() for t in out)
        return fn

    def close(self):
        for h in self.handles:
            h.remove()


class HiddenProbe:
    """Captures the output of every decoder layer and of the final norm."""

    def __init__(self, model):
        self.records, self.handles = {}, []
        for i, layer in enumerate(model.model.layers):
            self.handles.append(layer.register_forward_hook(self._hook(f"layer{i}")))
        self.handles.append(model.model.norm.register_forward_hook(self._hook("norm")))

    def _hook(self, key):
        def fn(module, args, out):
            t = out[0] if isinstance(out, tuple) else out
            self.records[key] = t.detach().float().cpu()
        return fn

    def close(self):
        for h in self.handles:
            h.remove()


def routing_margins(cfg, router_logits, topk_idx):
    """Smallest gap between the last selected and the best unselected candidate (per MoE layer).

    A tiny gap means an fp32 reimplementation could legitimately pick a different expert.
    """
    k = cfg["num_experts_per_tok"]
    experts = cfg["n_routed_experts"]
    if cfg["model_type"] == "deepseek_v3":
        return None  # handled with the bias in routing_margins_v3
    scores = router_logits.softmax(-1)
    if cfg["topk_method"] == "group_limited_greedy":
        ng, tg = cfg["n_group"], cfg["topk_group"]
        gs = scores.view(-1, ng, experts // ng).amax(-1).sort(-1, descending=True).values
        group_gap = (gs[:, tg - 1] - gs[:, tg]).min().item()
    else:
        group_gap = None
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, topk_idx.long(), True)
    last = scores.masked_fill(~chosen, float("inf")).amin(-1)
    if cfg["topk_method"] == "group_limited_greedy":
        ng, tg = cfg["n_group"], cfg["topk_group"]
        gsel = scores.view(-1, ng, experts // ng).amax(-1).topk(tg, -1).indices
        gmask = torch.zeros(scores.shape[0], ng, dtype=torch.bool).scatter_(1, gsel, True)
        allowed = gmask[:, :, None].expand(-1, ng, experts // ng).reshape(-1, experts)
        cand = scores.masked_fill(chosen | ~allowed, -float("inf")).amax(-1)
    else:
        cand = scores.masked_fill(chosen, -float("inf")).amax(-1)
    return (last - cand).min().item(), group_gap


def routing_margins_v3(cfg, router_logits, topk_idx, bias):
    experts, ng, tg = cfg["n_routed_experts"], cfg["n_group"], cfg["topk_group"]
    s = router_logits.sigmoid() + bias[None]
    gs = s.view(-1, ng, experts // ng).topk(2, -1).values.sum(-1)
    gss = gs.sort(-1, descending=True).values
    group_gap = (gss[:, tg - 1] - gss[:, tg]).min().item()
    gsel = gs.topk(tg, -1).indices
    gmask = torch.zeros(s.shape[0], ng, dtype=torch.bool).scatter_(1, gsel, True)
    allowed = gmask[:, :, None].expand(-1, ng, experts // ng).reshape(-1, experts)
    chosen = torch.zeros_like(s, dtype=torch.bool).scatter_(1, topk_idx.long(), True)
    last = s.masked_fill(~chosen, float("inf")).amin(-1)
    cand = s.masked_fill(chosen | ~allowed, -float("inf")).amax(-1)
    return (last - cand).min().item(), group_gap


@torch.no_grad()
def greedy(model, ids, device, steps):
    """Pure argmax continuation, full recompute each step (no cache, no logits processors)."""
    seq = ids.clone()
    tokens, margins = [], []
    for _ in range(steps):
        logits = forward_logits(model, seq, device)[-1]
        top2 = logits.topk(2)
        tokens.append(int(top2.indices[0]))
        margins.append(float(top2.values[0] - top2.values[1]))
        seq = torch.cat([seq, top2.indices[:1]])
    return torch.tensor(tokens, dtype=torch.int32), margins


@torch.no_grad()
def greedy_generate(model, ids, device, steps):
    """The same continuation through model.generate (KV cache); eos disabled so it cannot stop."""
    from transformers import GenerationConfig
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=steps, eos_token_id=None,
                               pad_token_id=0, bos_token_id=None)
    out = model.generate(ids[None].to(device), generation_config=gen_cfg,
                         attention_mask=torch.ones(1, ids.numel(), dtype=torch.long, device=device))
    return out[0, ids.numel():].cpu().to(torch.int32)


def logits_stats(x):
    return (f"mean {x.mean():+.4f} std {x.std():.4f} min {x.min():+.3f} max {x.max():+.3f} "
            f"distinct-argmax {x.argmax(-1).unique().numel()}/{x.shape[0]}")


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def run_variant(name, spec, out_root, device, command, date):
    print(f"=== {name} ===")
    vdir = out_root / name
    if vdir.exists() or vdir.is_symlink():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)
    cfg = build_config(spec["base"], spec["overrides"], spec["fp8"])
    write_config(vdir, cfg)

    weights = make_weights(cfg, spec["weight_seed"])
    tmp = Path(tempfile.mkdtemp(prefix=f"golden_{name}_"))
    try:
        if spec["fp8"]:
            ckpt, reference_weights = to_fp8_checkpoint(weights)
            write_checkpoint(vdir, ckpt, cfg["num_hidden_layers"])
            # Dequantized twin (no quantization_config, dequantized linears stored as F32 so the
            # twin holds exactly q * scale_inv) for the from_pretrained round trip.
            twin_cfg = build_config(spec["base"], spec["overrides"], fp8=False)
            write_config(tmp, twin_cfg)
            write_checkpoint(tmp, reference_weights, cfg["num_hidden_layers"])
            model_config_dir, verify_dir = tmp, tmp
        else:
            reference_weights = weights
            if spec["weights_from"]:
                # Identical weights: share the files instead of committing a second copy.
                src = out_root / spec["weights_from"]
                for f in sorted(src.glob("model*.safetensors*")):
                    (vdir / f.name).symlink_to(Path("..") / spec["weights_from"] / f.name)
                written = load_all(vdir)
                assert written.keys() == weights.keys()
                assert all(torch.equal(written[k], weights[k]) for k in weights)
            else:
                write_checkpoint(vdir, weights, cfg["num_hidden_layers"])
            model_config_dir, verify_dir = vdir, vdir

        model = build_model(model_config_dir, reference_weights, cfg, device)
        ids = prompts(cfg["vocab_size"])

        router, hidden = RouterProbe(model), HiddenProbe(model)
        logits, routes, hiddens = [], [], []
        for p in ids:
            router.records.clear()
            logits.append(forward_logits(model, p, device))
            routes.append(dict(router.records))
            hiddens.append(dict(hidden.records))
        router.close()
        hidden.close()

        greedy_tokens, greedy_margins = greedy(model, ids[1], device, GREEDY_STEPS)
        gen_tokens = greedy_generate(model, ids[1], device, GREEDY_STEPS)
        gen_match = torch.equal(gen_tokens, greedy_tokens)

        # Round trip: the written checkpoint, loaded by transformers itself, must give the same logits.
        loaded, info = AutoModelForCausalLM.from_pretrained(
            str(verify_dir), dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"{name}: from_pretrained loading problems: {problems}"
        loaded = loaded.to(device).eval()
        roundtrip = max((forward_logits(loaded, p, device) - l).abs().max().item()
                        for p, l in zip(ids, logits))
        del loaded
        assert roundtrip == 0.0, f"{name}: from_pretrained logits differ by {roundtrip}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Summary.
    for i, l in enumerate(logits):
        print(f"logits_{i} [{l.shape[0]}, {l.shape[1]}]: {logits_stats(l)}")
    moe_layers = sorted(routes[0])
    for layer in moe_layers:
        idx = torch.cat([r[layer][2] for r in routes]).long()
        counts = torch.bincount(idx.flatten(), minlength=cfg["n_routed_experts"])
        rl = torch.cat([r[layer][0] for r in routes])
        if cfg["model_type"] == "deepseek_v3":
            bias = reference_weights[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"]
            gap, ggap = routing_margins_v3(cfg, rl, idx, bias)
        else:
            gap, ggap = routing_margins(cfg, rl, idx)
        gtxt = f", min group-selection gap {ggap:.2e}" if ggap is not None else ""
        print(f"layer {layer} expert use (both prompts): {counts.tolist()}; "
              f"min top-k selection gap {gap:.2e}{gtxt}")
    print(f"greedy_1: {greedy_tokens.tolist()}  top1-top2 margins: "
          f"{[round(m, 3) for m in greedy_margins]}")
    print(f"generate() with KV cache gives the same tokens: {gen_match} {gen_tokens.tolist()}")
    print(f"prompt top1-top2 min margin: "
          f"{min((l.topk(2).values[:, 0] - l.topk(2).values[:, 1]).min().item() for l in logits):.2e}")
    print(f"from_pretrained round trip: max abs logits diff {roundtrip}")
    for l in logits:
        assert torch.isfinite(l).all()
        assert 0.3 < l.std().item() < 10.0, "degenerate logits"
    for layer in moe_layers:
        idx = torch.cat([r[layer][2] for r in routes]).long()
        assert torch.bincount(idx.flatten(), minlength=cfg["n_routed_experts"]).gt(0).sum() >= \
            cfg["n_routed_experts"] // 2, "routing collapsed onto few experts"

    golden = OrderedDict()
    for i, (p, l) in enumerate(zip(ids, logits)):
        golden[f"input_ids_{i}"] = p.to(torch.int32)
        golden[f"logits_{i}"] = l.contiguous()
    golden["greedy_1"] = greedy_tokens
    # Debugging extras for prompt 1: hidden state after each decoder layer and after the final
    # norm, and each MoE layer's selected experts (ascending ids) and their weights.
    rotary = model.model.rotary_emb
    golden["rope_inv_freq"] = rotary.inv_freq.detach().float().cpu().contiguous()
    golden["hidden_1"] = torch.stack(
        [hiddens[1][f"layer{i}"][0] for i in range(cfg["num_hidden_layers"])] + [hiddens[1]["norm"][0]])
    for layer in moe_layers:
        _, w, idx = routes[1][layer]
        order = idx.argsort(-1)
        golden[f"topk_ids_1_layer{layer}"] = idx.gather(-1, order).to(torch.int32).contiguous()
        golden[f"topk_weights_1_layer{layer}"] = w.gather(-1, order).contiguous()
    meta = {
        "variant": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "command": command,
        "date": date,
        "device": str(device),
        "weight_seed": str(spec["weight_seed"]),
        "prompt_seed": str(PROMPT_SEED),
        "reference": "float32, attn_implementation=eager, weights = stored values"
                     + (" dequantized (fp8 * weight_scale_inv)" if spec["fp8"] else ""),
        "greedy_1_matches_generate_with_cache": str(gen_match),
        "rope_attention_scaling": repr(float(rotary.attention_scaling)),
        "softmax_scale": repr(float(model.model.layers[0].self_attn.scaling)),
    }
    save_file(golden, str(vdir / "golden.safetensors"), metadata=meta)
    for f in sorted(vdir.iterdir()):
        size = "symlink" if f.is_symlink() else f"{f.stat().st_size} B"
        print(f"  {f.relative_to(out_root)}: {size}")


def load_all(directory):
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    out = {}
    for fname in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(directory / fname)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO_ROOT / "tests" / "data" / "golden"),
                    help="output directory (default: tests/data/golden)")
    ap.add_argument("--device", default="cpu", help="torch device for the reference runs (default cpu)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)

    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    try:
        script = Path(sys.argv[0]).resolve().relative_to(REPO_ROOT)
    except ValueError:
        script = Path(sys.argv[0])
    command = " ".join(["python3", str(script)] + sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    names = [n for n in args.variants.split(",") if n]
    for n in names:
        if n not in VARIANTS:
            ap.error(f"unknown variant {n}")
        dep = VARIANTS[n]["weights_from"]
        if dep and dep not in names and not (out_root / dep / "model.safetensors.index.json").exists():
            ap.error(f"{n} shares weights with {dep}; generate {dep} too")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {device}")
    for n in names:
        run_variant(n, VARIANTS[n], out_root, device, command, date)


if __name__ == "__main__":
    main()
