"""Spacetime DiT throughput: step time, tokens/s and FLOP/s at the toy and DiT S/B/L/XL sizes.

    python benchmarks/dit.py                                  # CPU: toy, S, B at small batches
    python benchmarks/dit.py --device cuda --bf16 --compile --sizes XL --batch 64 --latent 4 1 32 32 --condition class
    python benchmarks/dit.py --device cuda --bf16 --compile --sizes S B L XL --batch 16 --latent 8 5 32 32

One training step = forward + backward + AdamW update of a SpacetimeDiT (adaLN-Zero;
``--condition text``: a jointly trained text encoder, cross-attention and pooled text, as
sora_edu trains; ``--condition class``: 1000 classes, DiT's ImageNet set-up) on random
latents. FLOPs are counted by PyTorch's FlopCounterMode on one sample and scaled by the
batch (every count is per sample: matmuls and attention; see ``sora_edu.models.dit.flops``).
On CPU the machine's own dense fp32 matmul rate is measured in the same run and reported as
the ratio achieved / matmul; on a GPU the ratio is MFU against ``--peak`` (H100 / H200 SXM
dense bf16: 989 TFLOP/s), and the bf16 matmul rate measured in the same run is printed
beside it. DESIGN.md's reference: DiT-XL/2 (``--latent 4 1 32 32 --condition class``, 256
tokens, batch 64) on one H100 with torch.compile reaches 37 % MFU.
"""

import argparse
import json
import time

import torch

from sora_edu.models.dit import SIZES, SpacetimeDiT, flops


def matmul_rate(device: str, dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        k += 1
    sync(device)
    return 2 * n**3 * k / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def inputs(args, batch: int) -> tuple:
    device = args.device
    x = torch.randn(batch, *args.latent, device=device)
    t = torch.rand(batch, device=device) * 1000
    if args.condition == "class":
        return x, t, torch.randint(0, 1000, (batch,), device=device)
    return x, t, {"ids": torch.randint(4, 62, (batch, 24), device=device),
                  "mask": torch.ones(batch, 24, dtype=torch.bool, device=device)}


def bench(size: str, args) -> dict:
    device = args.device
    torch.manual_seed(0)
    condition = {"num_classes": 1000} if args.condition == "class" else {"vocab_size": 62, "text_dim": 128}
    model = SpacetimeDiT(args.latent[0], tuple(args.patch), **SIZES[size], **condition).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    # Counted on one sample (cheap at XL sizes) and scaled: every term is per sample.
    step_flops = flops(model, *inputs(args, 1), backward=True) * args.batch
    model.zero_grad(set_to_none=True)
    x, t, cond = inputs(args, args.batch)
    run = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = run(x, t, cond).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    tokens = args.batch * model.tokens(args.latent)
    return {"size": size, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "tokens": tokens,
            "step_s": seconds, "tokens_per_s": tokens / seconds, "tflops": step_flops / seconds / 1e12,
            "peak_GB": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", default=["toy", "S", "B"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latent", type=int, nargs=4, default=[8, 5, 16, 16], help="C T H W of one latent")
    parser.add_argument("--patch", type=int, nargs=3, default=[1, 2, 2])
    parser.add_argument("--condition", default="text", choices=["text", "class"],
                        help="text (sora_edu's t2v model) or 1000 classes (DiT's ImageNet model)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak", type=float, default=989e12, help="GPU peak FLOP/s for MFU (H100 SXM bf16 dense)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="append each size's figures to this JSON-lines file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        reference = matmul_rate("cpu", torch.float32)
        label = f"CPU ({args.threads} threads), dense fp32 matmul {reference / 1e9:.0f} GFLOP/s"
    else:
        reference = args.peak
        measured = matmul_rate("cuda", torch.bfloat16, n=8192)
        label = (f"{torch.cuda.get_device_name()}, peak {reference / 1e12:.0f} TFLOP/s "
                 f"(bf16 8192^3 matmul measured now: {measured / 1e12:.0f})")
    print(f"{label}; latent {tuple(args.latent)}, patch {tuple(args.patch)}, {args.condition}, batch {args.batch}, "
          f"{'bf16' if args.bf16 else 'fp32'}{', compiled' if args.compile else ''}")
    print(f"{'size':>4} {'params':>8} {'tokens':>7} {'step':>9} {'tokens/s':>10} {'TFLOP/s':>8} "
          f"{'of ref':>7} {'peak mem':>9}")
    for size in args.sizes:
        r = bench(size, args)
        print(f"{r['size']:>4} {r['params_M']:>7.1f}M {r['tokens']:>7} {r['step_s'] * 1000:>7.0f}ms "
              f"{r['tokens_per_s']:>10.0f} {r['tflops']:>8.3f} {r['tflops'] * 1e12 / reference:>7.1%} "
              f"{r['peak_GB']:>8.1f}G")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**r, "reference": reference, "ratio": r["tflops"] * 1e12 / reference,
                                    **{k: v for k, v in vars(args).items() if k != "json"}}) + "\n")


if __name__ == "__main__":
    main()
