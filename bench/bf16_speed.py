"""bf16 autocast against fp32 on this machine's CPU: a plain matrix product and a real UNet training step.

    python bench/bf16_speed.py [--preset small] [--repeats 5]

Prints a table and writes bench/results/bf16.json and bench/results/bf16.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_tflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _time(lambda: a @ b, repeats) / 1e12


def unet_step_seconds(preset: str, bf16: bool, batch: int, repeats: int) -> float:
    from latentgen.models.unet import PRESETS, build_unet

    cfg = PRESETS[preset]
    torch.manual_seed(0)
    unet = build_unet(cfg)
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    t = torch.randint(0, 1024, (batch,))
    ctx = torch.randn(batch, 16, cfg.cross_attention_dim)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(x, t, encoder_hidden_states=ctx).sample
        out.float().square().mean().backward()
        unet.zero_grad(set_to_none=True)

    return _time(step, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=1024, help="matrix side")
    args = p.parse_args(argv)
    res = {"threads": torch.get_num_threads(), "matrix_side": args.size}
    res["matmul_fp32_tflops"] = matmul_tflops(args.size, torch.float32, args.repeats)
    res["matmul_bf16_tflops"] = matmul_tflops(args.size, torch.bfloat16, args.repeats)
    res["unet_preset"], res["unet_batch"] = args.preset, args.batch
    res["unet_step_fp32_s"] = unet_step_seconds(args.preset, False, args.batch, args.repeats)
    res["unet_step_bf16_s"] = unet_step_seconds(args.preset, True, args.batch, args.repeats)
    res["matmul_speedup"] = res["matmul_bf16_tflops"] / res["matmul_fp32_tflops"]
    res["unet_step_speedup"] = res["unet_step_fp32_s"] / res["unet_step_bf16_s"]
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/bf16.json", "w") as f:
        json.dump(res, f, indent=2)
    md = (f"| measure | fp32 | bf16 autocast | speed-up |\n|---|---|---|---|\n"
          f"| {args.size}^2 matmul (TFLOP/s) | {res['matmul_fp32_tflops']:.3f} | {res['matmul_bf16_tflops']:.3f} "
          f"| {res['matmul_speedup']:.2f}x |\n"
          f"| UNet `{args.preset}` train step, batch {args.batch} (s) | {res['unet_step_fp32_s']:.3f} "
          f"| {res['unet_step_bf16_s']:.3f} | {res['unet_step_speedup']:.2f}x |\n"
          f"\n{res['threads']} torch threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"command: `python bench/bf16_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    with open("bench/results/bf16.md", "w") as f:
        f.write(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
