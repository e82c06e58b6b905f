#!/usr/bin/env python3
"""Developer tool: writes reference vectors from Hugging Face Transformers' own MixtralForCausalLM.

Outputs go to tests/reference/mixtral/ (see tests/reference/README.md). The library and its tests never
run this script; they only read the small files it writes, which are committed. Running it again with
the versions recorded in mixtral/inputs.json must reproduce them.

Invariants the script checks before it writes anything final:
  * no near-ties in routing (top-k vs next probability margin > MIN_ROUTING_MARGIN, every token/layer);
  * the float32 and float64 runs pick the same experts for every token;
  * the checkpoint reloads with from_pretrained and gives bit-identical float32 logits;
  * the classic per-expert tensors equal the in-memory fused tensors under the documented mapping;
  * an independent float64 re-implementation of the formulas in README.md matches HF's outputs,
    loss, aux loss, and a hand-written AdamW step matches torch.optim.AdamW.
"""

import argparse
import copy
import inspect
import json
import os
import platform
import re
import shutil
import sys

import torch
import torch.nn.functional as F

import safetensors
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import MixtralConfig, MixtralForCausalLM

SEED = 1234
BATCH, SEQ = 2, 11
MIN_ROUTING_MARGIN = 1e-4
NORM_WEIGHT_STD = 0.2

CONFIG = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    router_aux_loss_coef=0.02,
    output_router_logits=False,
    sliding_window=None,
    attention_dropout=0.0,
    router_jitter_noise=0.0,
    hidden_act="silu",
    initializer_range=0.2,
    torch_dtype="float32",
    attn_implementation="eager",
    experts_implementation="eager",
)

ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def make_config():
    """MixtralConfig from CONFIG, spelled for this transformers version (rope_parameters/dtype in v5)."""
    kw = {k: v for k, v in CONFIG.items() if k not in ("rope_theta", "torch_dtype")}
    sig = inspect.signature(MixtralConfig.__init__).parameters
    fields = getattr(MixtralConfig, "__annotations__", {})
    if "rope_parameters" in sig or "rope_parameters" in fields:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": CONFIG["rope_theta"]}
    else:
        kw["rope_theta"] = CONFIG["rope_theta"]
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["dtype"] = CONFIG["torch_dtype"]
    else:
        kw["torch_dtype"] = CONFIG["torch_dtype"]
    cfg = MixtralConfig(**kw)
    # The plain per-expert loop and eager attention: the implementations that also run in float64.
    cfg._attn_implementation = CONFIG["attn_implementation"]
    cfg._experts_implementation = CONFIG["experts_implementation"]
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
    assert theta == CONFIG["rope_theta"], theta
    return cfg


IMPL_KW = dict(attn_implementation=CONFIG["attn_implementation"],
               experts_implementation=CONFIG["experts_implementation"])


def build_model(cfg, seed):
    torch.manual_seed(seed)
    model = MixtralForCausalLM(cfg).float().eval()
    # HF initialises every RMSNorm weight to exactly 1; perturb them so that a missing or misapplied
    # norm weight in another implementation changes the outputs.
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + NORM_WEIGHT_STD * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------- layouts

def to_classic(named, cfg):
    """In-memory parameter dict (any layout) -> classic per-expert checkpoint names.

    Fused (transformers >= 5): mlp.experts.gate_up_proj [E, 2I, H] = cat(w1 (gate), w3 (up)) along dim 1,
    mlp.experts.down_proj [E, H, I] = stack(w2); mlp.gate.weight = block_sparse_moe.gate.weight.
    No transposes: every tensor keeps nn.Linear's [out_features, in_features] orientation.
    """
    inter = cfg.intermediate_size
    out = {}
    for name, t in named.items():
        if ".mlp.experts.gate_up_proj" in name:
            base = name.replace(".mlp.experts.gate_up_proj", ".block_sparse_moe.experts")
            for e in range(t.shape[0]):
                out[f"{base}.{e}.w1.weight"] = t[e, :inter, :].clone()
                out[f"{base}.{e}.w3.weight"] = t[e, inter:, :].clone()
        elif ".mlp.experts.down_proj" in name:
            base = name.replace(".mlp.experts.down_proj", ".block_sparse_moe.experts")
            for e in range(t.shape[0]):
                out[f"{base}.{e}.w2.weight"] = t[e].clone()
        elif ".mlp.gate.weight" in name:
            out[name.replace(".mlp.gate.weight", ".block_sparse_moe.gate.weight")] = t.clone()
        else:
            out[name] = t.clone()
    return out


def file_layout(path):
    with safe_open(path, "pt") as f:
        keys = sorted(f.keys())
    if any(".block_sparse_moe.experts." in k and k.endswith(".w1.weight") for k in keys):
        return "classic", keys
    if any(k.endswith(".mlp.experts.gate_up_proj") for k in keys):
        return "fused", keys
    raise SystemExit(f"unknown expert layout in {path}: {keys}")


# ---------------------------------------------------------------- independent float64 re-implementation

def independent_forward(sd, ids, cfg):
    """The formulas of README.md, written from scratch in float64 on classic tensor names."""
    sd = {k: v.double() for k, v in sd.items()}
    B, S = ids.shape
    H, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    E, k_top, L, eps = cfg.num_local_experts, cfg.num_experts_per_tok, cfg.num_hidden_layers, cfg.rms_norm_eps

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))

    def rot_half(x):
        return torch.cat((-x[..., hd // 2:], x[..., : hd // 2]), dim=-1)

    inv = 1.0 / (CONFIG["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(S, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat((ang.cos(), ang.cos()), -1)
    sin = torch.cat((ang.sin(), ang.sin()), -1)
    causal = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)

    x = sd["model.embed_tokens.weight"][ids]
    hidden = [x]
    router_logits, probs_all, top_all = [], [], []
    for layer in range(L):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(B, S, nh, hd).transpose(1, 2)
        kk = (h @ sd[p + "self_attn.k_proj.weight"].T).view(B, S, nkv, hd).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, S, nkv, hd).transpose(1, 2)
        q = q * cos + rot_half(q) * sin
        kk = kk * cos + rot_half(kk) * sin
        grp = nh // nkv  # query head j uses key/value head j // grp
        kk = kk.repeat_interleave(grp, dim=1)
        v = v.repeat_interleave(grp, dim=1)
        sc = (q @ kk.transpose(-1, -2)) * hd ** -0.5
        sc = sc.masked_fill(causal, float("-inf"))
        a = torch.softmax(sc, -1) @ v
        x = x + a.transpose(1, 2).reshape(B, S, nh * hd) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"]).reshape(B * S, H)
        rl = h @ sd[p + "block_sparse_moe.gate.weight"].T
        pr = torch.softmax(rl, -1)
        topv, topi = torch.topk(pr, k_top, dim=-1)
        topw = topv / topv.sum(-1, keepdim=True)
        y = torch.zeros_like(h)
        for t in range(B * S):
            for j in range(k_top):
                e = int(topi[t, j])
                pe = p + f"block_sparse_moe.experts.{e}."
                g = sd[pe + "w1.weight"] @ h[t]
                u = sd[pe + "w3.weight"] @ h[t]
                y[t] += topw[t, j] * (sd[pe + "w2.weight"] @ (F.silu(g) * u))
        x = x + y.view(B, S, H)
        hidden.append(x)
        router_logits.append(rl)
        probs_all.append(pr)
        top_all.append(topi)
    final = rms(x, sd["model.norm.weight"])
    logits = final @ sd["lm_head.weight"].T
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    # HF aux loss: all layers' rows concatenated; f_e counts top-k assignments (sums to k), P_e mean prob.
    rows = L * B * S
    f = torch.zeros(E, dtype=torch.float64)
    for ti in top_all:
        f += torch.bincount(ti.reshape(-1), minlength=E).double()
    f /= rows
    pm = torch.cat(probs_all).sum(0) / rows
    aux = E * (f * pm).sum()
    return dict(logits=logits, loss=loss, aux=aux, hidden=hidden, final=final, router_logits=router_logits)


def independent_adamw(param, grad):
    """torch.optim.AdamW, step 1, written out (decoupled decay first, then bias-corrected Adam)."""
    lr, (b1, b2), eps, wd = ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"]
    t = 1
    p = param * (1.0 - lr * wd)
    m = (1.0 - b1) * grad
    v = (1.0 - b2) * grad * grad
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    return p - (lr / bc1) * m / (v.sqrt() / bc2 ** 0.5 + eps)


def rel(a, b):
    a, b = a.double(), b.double()
    nb = b.norm().item()
    return (a - b).norm().item() / (nb if nb > 0 else 1.0)


# ---------------------------------------------------------------- main

def forward_with_hidden(model, ids):
    """One forward with labels; also captures residual-stream states with hooks (names of README.md)."""
    caught = {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: caught.__setitem__(0, o))]
    for layer_idx, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, n=layer_idx + 1: caught.__setitem__(n, o[0] if isinstance(o, tuple) else o)))
    hooks.append(model.model.norm.register_forward_hook(lambda m, i, o: caught.__setitem__("final", o)))
    out = model(input_ids=ids, labels=ids, output_router_logits=False, use_cache=False)
    for hk in hooks:
        hk.remove()
    return out, caught


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "mixtral"), help="output folder (replaced)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--save-fused", action="store_true",
                    help="testing aid: save the fused in-memory layout (exercises the classic/ copy path)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic CPU reductions

    cfg = make_config()
    model = build_model(cfg, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)

    # ---- float64 copy: the reference run
    ref = copy.deepcopy(model).double().eval()
    out, caught = forward_with_hidden(ref, ids)
    ref.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
    with torch.no_grad():
        out_r = ref(input_ids=ids, labels=ids, output_router_logits=True, use_cache=False)
    router_logits = [r.detach().clone() for r in out_r.router_logits]
    aux = out_r.aux_loss.detach().clone()

    # ---- routing margins (HF ranks the softmax probabilities)
    k_top = cfg.num_experts_per_tok
    min_margin, min_logit_margin = float("inf"), float("inf")
    top_sets = []
    for rl in router_logits:
        pr = torch.softmax(rl.double(), -1)
        sp, _ = torch.sort(pr, -1, descending=True)
        sl, _ = torch.sort(rl.double(), -1, descending=True)
        min_margin = min(min_margin, (sp[:, k_top - 1] - sp[:, k_top]).min().item())
        min_logit_margin = min(min_logit_margin, (sl[:, k_top - 1] - sl[:, k_top]).min().item())
        top_sets.append(torch.topk(pr, k_top, -1).indices.sort(-1).values)
    print(f"minimum routing margin: probability {min_margin:.6g}, logit {min_logit_margin:.6g}")
    if not min_margin > MIN_ROUTING_MARGIN:
        raise SystemExit(f"near-tie in routing (margin {min_margin:.3g}); pick another --seed")

    # ---- AdamW step on the LM-loss gradient (aux loss not included)
    opt = torch.optim.AdamW(ref.parameters(), lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"], foreach=False)
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    opt.step()
    after = {n: p.detach().clone() for n, p in ref.named_parameters()}

    # ---- float32 run of the same model: how far float32 is from the reference, same experts?
    out32, _ = forward_with_hidden(model, ids)
    model.zero_grad(set_to_none=True)
    out32.loss.backward()
    with torch.no_grad():
        r32 = model(input_ids=ids, output_router_logits=True, use_cache=False).router_logits
    for layer, rl in enumerate(r32):
        if not torch.equal(torch.topk(rl, k_top, -1).indices.sort(-1).values, top_sets[layer]):
            raise SystemExit(f"float32 and float64 routing differ in layer {layer}; pick another --seed")
    g32 = {n: p.grad for n, p in model.named_parameters()}
    fp32_gap = dict(
        logits=rel(out32.logits, out.logits),
        loss=rel(out32.loss.reshape(1), out.loss.reshape(1)),
        grads_max=max(rel(g32[n], grads[n]) for n in grads),
    )
    print("float32 vs float64 relative gaps:", fp32_gap)
    model.zero_grad(set_to_none=True)

    # ---- save the float32 model, determine the layout, reload and compare
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    save_kw = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kw["safe_serialization"] = True
    if args.save_fused:
        save_kw["save_original_format"] = False
    model.save_pretrained(args.out, **save_kw)
    model_file = os.path.join(args.out, "model.safetensors")
    layout, file_keys = file_layout(model_file)
    print("save_pretrained expert layout:", layout)

    mem32 = {n: p.detach().clone() for n, p in model.named_parameters()}
    classic32 = to_classic(mem32, cfg)
    if layout == "classic":
        on_disk = load_file(model_file)
        assert sorted(on_disk) == sorted(classic32), (sorted(on_disk), sorted(classic32))
        for n in on_disk:
            assert on_disk[n].dtype == torch.float32 and torch.equal(on_disk[n], classic32[n]), n
    else:
        cdir = os.path.join(args.out, "classic")
        os.makedirs(cdir)
        save_file({k: v.contiguous() for k, v in sorted(classic32.items())},
                  os.path.join(cdir, "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(os.path.join(args.out, "config.json"), os.path.join(cdir, "config.json"))
        from_classic = MixtralForCausalLM.from_pretrained(cdir, dtype=torch.float32, **IMPL_KW).eval()
        with torch.no_grad():
            lc = from_classic(input_ids=ids, use_cache=False).logits
        assert torch.equal(lc, out32.logits.detach()), "classic copy does not reproduce the logits"

    reloaded = MixtralForCausalLM.from_pretrained(args.out, dtype=torch.float32, **IMPL_KW).eval()
    with torch.no_grad():
        lr_ = reloaded(input_ids=ids, use_cache=False).logits
    assert torch.equal(lr_, out32.logits.detach()), "reloaded checkpoint gives different logits"
    print("self-check: from_pretrained reload gives identical float32 logits")

    # ---- independent float64 re-implementation of README's formulas
    ind = independent_forward(to_classic(before, cfg), ids, cfg)
    checks = dict(
        logits=rel(ind["logits"], out.logits),
        loss=rel(ind["loss"].reshape(1), out.loss.reshape(1)),
        aux=rel(ind["aux"].reshape(1), aux.reshape(1)),
        router_logits=max(rel(a, b) for a, b in zip(ind["router_logits"], router_logits)),
        hidden=max(rel(ind["hidden"][i], caught[i]) for i in range(cfg.num_hidden_layers + 1)),
        final=rel(ind["final"], caught["final"]),
        adamw=max(rel(independent_adamw(before[n], grads[n]), after[n]) for n in before),
    )
    print("independent float64 re-implementation vs HF (relative):", checks)
    # HF keeps some float32 steps even in a float64 model (README.md); 1e-6 is far below float32 noise.
    bad = {k: v for k, v in checks.items() if not v < 1e-6}
    if bad:
        raise SystemExit(f"independent re-implementation disagrees with HF: {bad}")

    # ---- reference.safetensors (classic names, float32)
    ref_t = {
        "input_ids": ids.to(torch.int64),
        "logits": out.logits.detach(),
        "loss": out.loss.detach().reshape(1),
        "aux_loss": aux.reshape(1),
    }
    for layer, rl in enumerate(router_logits):
        ref_t[f"router_logits.{layer}"] = rl
    for i in range(cfg.num_hidden_layers + 1):
        ref_t[f"hidden_states.{i}"] = caught[i].detach()
    ref_t["final_hidden"] = caught["final"].detach()
    for n, t in to_classic(grads, cfg).items():
        ref_t[f"grad.{n}"] = t
    for n, t in to_classic(after, cfg).items():
        ref_t[f"after_adamw.{n}"] = t
    ref_t = {k: (v if k == "input_ids" else v.to(torch.float32)).contiguous() for k, v in sorted(ref_t.items())}
    save_file(ref_t, os.path.join(args.out, "reference.safetensors"),
              metadata={"format": "pt", "source": "tests/reference/make_mixtral_reference.py"})

    # ---- inputs.json
    shapes = {n: list(t.shape) for n, t in sorted(classic32.items())}
    info = {
        "generator": "tests/reference/make_mixtral_reference.py",
        "seed": args.seed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
        "config": CONFIG,
        "values": {"loss": out.loss.item(), "aux_loss": aux.item()},
        "norm_weights": f"RMSNorm weights set to 1 + {NORM_WEIGHT_STD} * N(0,1) after HF's init",
        "input_ids": ids.tolist(),
        "labels": ids.tolist(),
        "loss": {
            "kind": "HF ForCausalLMLoss: position s predicts labels[s+1]; last position ignored",
            "reduction": "mean over the batch*(seq-1) predicted tokens",
            "num_predicted_tokens": BATCH * (SEQ - 1),
            "includes_aux_loss": False,
        },
        "optimizer": {
            "name": "torch.optim.AdamW",
            "lr": ADAMW["lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
            "weight_decay": ADAMW["weight_decay"], "weight_decay_applies_to": "all parameters",
            "steps": 1, "amsgrad": False, "maximize": False,
            "gradient": "grad.* (LM loss only, aux loss not added)",
        },
        "checkpoint_layout": {
            "save_pretrained_writes": layout,
            "model_file": "model.safetensors" if layout == "classic" else "classic/model.safetensors",
            "reference_names": "classic (same names as the classic checkpoint)",
            "in_memory_to_classic": {
                "model.layers.N.mlp.gate.weight": "model.layers.N.block_sparse_moe.gate.weight",
                "model.layers.N.mlp.experts.gate_up_proj[e, :I, :]": "model.layers.N.block_sparse_moe.experts.e.w1.weight",
                "model.layers.N.mlp.experts.gate_up_proj[e, I:, :]": "model.layers.N.block_sparse_moe.experts.e.w3.weight",
                "model.layers.N.mlp.experts.down_proj[e]": "model.layers.N.block_sparse_moe.experts.e.w2.weight",
            },
            "file_keys": file_keys,
        },
        "parameter_shapes": shapes,
        "routing": {
            "min_top_k_probability_margin": min_margin,
            "min_top_k_logit_margin": min_logit_margin,
            "same_experts_in_float32_and_float64": True,
        },
        "precision": {
            "reference_run": "HF model converted to float64 (stored as float32); HF still rounds to float32 in "
                             "RMSNorm, RoPE cos/sin, attention softmax, router softmax/top-k weights, "
                             "cross-entropy and aux-loss sums",
            "float32_model_vs_reference_relative": fp32_gap,
            "independent_float64_vs_reference_relative": checks,
        },
    }
    text = json.dumps(info, indent=1)
    # One line per list of numbers (token ids, shapes) keeps the file readable.
    text = re.sub(r"\[[\s\d.eE+-,]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[")
                  .replace(" ]", "]"), text)
    with open(os.path.join(args.out, "inputs.json"), "w") as f:
        f.write(text + "\n")

    total = 0
    for root, _, files in os.walk(args.out):
        for fn in sorted(files):
            sz = os.path.getsize(os.path.join(root, fn))
            total += sz
            print(f"{os.path.relpath(os.path.join(root, fn), args.out)}: {sz} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
