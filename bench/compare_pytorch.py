#!/usr/bin/env python3
"""Run moe-bench's configs in PyTorch (Hugging Face MixtralForCausalLM, same sizes, same thread
count, AdamW + clipping, fp32 on the CPU) and in moe-bench, and print the speed ratio.

Developer tool: needs torch and transformers (pip); libmoe itself never needs Python.

    python3 bench/compare_pytorch.py --moe-bench build/release/tools/moe-bench --threads 2
"""
import argparse
import json
import statistics
import subprocess
import time

# Must match tools/moe-bench/main.c.
CONFIGS = {
    "matmul": dict(d_model=512, layers=2, heads=8, kv_heads=8, experts=8, top_k=2, expert_hidden=1024, vocab=256, batch=8, seq=128),
    "finegrained": dict(d_model=256, layers=2, heads=8, kv_heads=8, experts=64, top_k=8, expert_hidden=128, vocab=256, batch=8, seq=128),
    "attention": dict(d_model=256, layers=2, heads=8, kv_heads=2, experts=4, top_k=1, expert_hidden=256, vocab=256, batch=1, seq=1024),
}


def torch_step_time(name, c, threads, steps, attn):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = MixtralConfig(
        vocab_size=c["vocab"], hidden_size=c["d_model"], intermediate_size=c["expert_hidden"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
        num_local_experts=c["experts"], num_experts_per_tok=c["top_k"], max_position_embeddings=c["seq"],
        tie_word_embeddings=False, output_router_logits=True, router_aux_loss_coef=0.01,
        attn_implementation=attn, torch_dtype=torch.float32)
    model = MixtralForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    n = c["batch"] * c["seq"]
    ids = torch.tensor([(i * 31 + 7) % c["vocab"] for i in range(n)]).view(c["batch"], c["seq"])
    times = []
    for s in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe-bench", required=True, help="path to the moe-bench binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--config", default="all", choices=["all"] + list(CONFIGS))
    ap.add_argument("--attn", default="sdpa", help="transformers attention implementation (sdpa or eager)")
    args = ap.parse_args()
    names = list(CONFIGS) if args.config == "all" else [args.config]
    print(f"{'config':<12} {'libmoe ms':>10} {'PyTorch ms':>11} {'speed-up':>9} {'libmoe of sgemm':>16}")
    for name in names:
        out = subprocess.run([args.moe_bench, "--config", name, "--steps", str(args.steps), "--threads",
                              str(args.threads), "--json"], check=True, capture_output=True, text=True).stdout
        ours = json.loads(out.strip().splitlines()[-1])
        theirs = torch_step_time(name, CONFIGS[name], args.threads, args.steps, args.attn)
        print(f"{name:<12} {ours['step_s'] * 1e3:>10.1f} {theirs * 1e3:>11.1f} {theirs / ours['step_s']:>8.2f}x "
              f"{100 * ours['fraction_of_sgemm']:>15.1f}%")


if __name__ == "__main__":
    main()
