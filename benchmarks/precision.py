"""One training step of each CPU recipe in fp32 and under bf16 autocast, on this machine.

    python benchmarks/precision.py                      # the default recipes
    python benchmarks/precision.py probe_t2v t2v_unet   # any configs under sora_edu/configs

Whether bf16 autocast pays on a CPU depends on the CPU. With AMX tile units (recent Xeon
servers) bf16 matmuls are several times faster than fp32 ones, and transformer steps gain
~25 %; without them (laptops; servers with AVX-512 BF16 only) autocast adds casts around
kernels that are no faster, and small convolutions lose most. This prints, for each config,
its optimiser step (forward, backward, AdamW) on one real training batch in both modes and
the ratio, with this machine's fp32 and bf16 2048^3 matmul rates, so the choice written in
each config can be checked where it will run (``--trainer.precision=32-true`` or
``bf16-mixed`` overrides it for one run).

A config whose data module reads cached latents trains its autoencoder first if it is not
in ``SORA_EDU_CACHE`` (minutes); the step itself never needs its trained weights.
"""

import argparse
import contextlib

import torch
from attention import timed  # the sibling benchmarks' timers (run as a script, benchmarks/ is on the path)
from dit import matmul_rate

DEFAULT = ["t2v_unet", "probe_t2v", "clip_t2v", "vae_t2v", "captioner", "upsampler", "t2v_demo"]


def step_seconds(config: str, repeat: int) -> dict[str, float]:
    from sora_edu.train.cached import QUIET
    from sora_edu.train.cli import from_config

    cli = from_config(config, *QUIET)
    module, data = cli.model.train(), cli.datamodule
    data.setup("fit")
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    optimiser = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)

    def step():
        out = module.training_step(batch, 0)
        (out["loss"] if isinstance(out, dict) else out).backward()
        optimiser.step()
        optimiser.zero_grad()

    modes = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", torch.bfloat16)}
    out = {}
    for name, mode in modes.items():
        with mode():
            out[name] = timed(step, repeat)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32, bf16 = (matmul_rate("cpu", dtype) / 1e9 for dtype in (torch.float32, torch.bfloat16))
    print(f"{args.threads} threads; 2048^3 matmul: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s")
    print(f"{'config':>12} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16 / fp32':>12}")
    for config in args.configs:
        s = step_seconds(config, args.repeat)
        print(f"{config:>12} {1e3 * s['fp32']:8.1f} {1e3 * s['bf16']:8.1f} {s['bf16'] / s['fp32']:12.2f}", flush=True)


if __name__ == "__main__":
    main()
