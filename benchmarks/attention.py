"""Attention on the CPU in bf16 vs fp32: why ``sora_edu.models.vit.attend`` computes in fp32 there.

    python benchmarks/attention.py

PyTorch's CPU ``scaled_dot_product_attention`` (the flash kernel) runs its forward at about
the same speed in bf16 and fp32, but its backward is several times slower in bf16. Under
``precision: bf16-mixed`` every transformer in the course would pay that on every step, so
``attend`` casts half-precision q, k, v to fp32 on the CPU (the rest of the step stays
bf16). This prints forward and forward + backward times of the raw kernel in both dtypes at
the course's shapes (the captioner's 80 video tokens; its 104-token causal decoder), then
one bf16-mixed training step of the captioner with ``attend`` as it is and with the bf16
kernel forced back, to show what the choice is worth end to end.
"""

import argparse
import time
from unittest import mock

import torch
import torch.nn.functional as F

import sora_edu.models.vit as vit
from sora_edu.models.captioner import PrefixLM


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def kernel(batch: int, heads: int, tokens: int, head_dim: int, causal: bool, dtype: torch.dtype, repeat: int):
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(tokens, tokens, dtype=torch.bool).tril() if causal else None
    forward = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), repeat)
    both = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward(), repeat)
    return forward, both


def captioner_step(batch: int, repeat: int) -> float:
    torch.manual_seed(0)
    net = PrefixLM(62, "video", dim=128, depth=3, heads=4, in_channels=8, patch_size=(1, 4, 4), video_depth=3)
    z, ids = torch.randn(batch, 8, 5, 16, 16), torch.randint(4, 62, (batch, 24))
    mask = torch.ones_like(ids, dtype=torch.bool)
    opt = torch.optim.AdamW(net.parameters())

    def step():
        with torch.autocast("cpu", torch.bfloat16):
            loss = net.loss(z, ids, mask)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return timed(step, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, 4 heads of 32")
    for tokens, causal in [(80, False), (104, True)]:
        for dtype in (torch.float32, torch.bfloat16):
            forward, both = kernel(args.batch, 4, tokens, 32, causal, dtype, args.repeat)
            print(f"  sdpa {tokens:3d} tokens{' causal' if causal else '       '} {str(dtype):15s} "
                  f"forward {forward * 1e3:6.1f} ms   forward + backward {both * 1e3:6.1f} ms")
    fp32 = captioner_step(args.batch, args.repeat)
    with mock.patch.object(vit, "attend", lambda q, k, v, mask=None: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)):
        bf16 = captioner_step(args.batch, args.repeat)
    print(f"  captioner training step, bf16-mixed: attention in fp32 (attend) {fp32:.3f} s, "
          f"in bf16 {bf16:.3f} s ({bf16 / fp32:.2f}x)")


if __name__ == "__main__":
    main()
