"""GPU decode throughput of the LLaMA engine on a 7B-shaped model with random weights.

    .venv/bin/python bench/engine_gpu.py              # CUDA: 7B shape, float16
    .venv/bin/python bench/engine_gpu.py --tiny       # a tiny shape (on the CPU if no CUDA)

Weights are random (normal, std 0.02) and made on the device itself, so no checkpoint is
needed. Decode tokens per second at batch 1 and batch 16 come from the median time of
`BatchDecoder.step()` (each step ends with the sampled tokens on the host, so the GPU
work is complete), prefill left out. The fraction of the memory-bandwidth limit is the
weight bytes read per token (every weight but the embedding table) times batch-1 steps
per second, over (a) a device-to-device copy measured here and (b) the card's nominal
figure when its name is known.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.llama.generation import BatchDecoder, SamplingParams
from inference.llama.model import ModelArgs, Transformer

SEVEN_B = ModelArgs(
    dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, max_seq_len=2048
)
TINY = ModelArgs(dim=256, n_layers=4, n_heads=8, vocab_size=32000, multiple_of=64, max_seq_len=512)

# Nominal memory bandwidth in bytes/s, by a substring of torch.cuda.get_device_name().
NOMINAL = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H100": 3.35e12,  # SXM
    "A100-SXM4-80GB": 2.04e12,
    "A100 80GB PCIe": 1.94e12,
    "A100": 1.555e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10G": 0.6e12,
    "V100": 0.9e12,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes moved (read + write) per second by a large copy on the device."""
    src = torch.ones(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def random_model(args: ModelArgs, device: torch.device, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval().requires_grad_(False)


def decode_rate(model: Transformer, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Decoded tokens per second over all rows (median step time, prefill excluded)."""
    decoder = BatchDecoder(model, None, max_batch_size=batch, max_seq_len=prompt_len + new_tokens)
    gen = torch.Generator().manual_seed(batch)
    for _ in range(batch):
        prompt = torch.randint(3, model.args.vocab_size, (prompt_len,), generator=gen).tolist()
        decoder.add(prompt, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    times = []
    while decoder.has_work():
        t = time.perf_counter()
        decoder.step()
        times.append(time.perf_counter() - t)
    steps = sorted(times[1:])
    return batch / steps[len(steps) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (CPU when no CUDA)")
    ap.add_argument("--dtype", default=None, help="default float16 on CUDA, float32 on CPU")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16")
    ns = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args = TINY if ns.tiny or not cuda else SEVEN_B
    dtype_name = ns.dtype or ("float16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    if not cuda and not ns.tiny:
        print("no CUDA device: running the tiny shape on the CPU")

    model = random_model(args, device, dtype)
    n_params = args.n_params()
    weight_bytes = (n_params - args.vocab_size * args.dim) * model.output.weight.element_size()
    print(
        f"device: {name}; model: {n_params / 1e9:.2f}B parameters "
        f"(dim {args.dim}, {args.n_layers} layers), {dtype_name}; "
        f"prompt {ns.prompt_len} + {ns.new_tokens} new tokens"
    )
    rates = {}
    for batch in (int(b) for b in ns.batches.split(",")):
        decode_rate(model, batch, 8, 4)  # warm-up: kernels, allocator
        rates[batch] = decode_rate(model, batch, ns.prompt_len, ns.new_tokens)
        print(f"batch {batch:3d}: {rates[batch]:9.1f} tok/s")
    if 1 in rates:
        achieved = weight_bytes * rates[1]
        measured = copy_bandwidth(device, 2 << 30 if cuda else 256 << 20)
        line = (
            f"batch-1 weight traffic {achieved / 1e9:.0f} GB/s = {achieved / measured:.0%} of "
            f"the measured copy bandwidth ({measured / 1e9:.0f} GB/s)"
        )
        nominal = next((bw for key, bw in NOMINAL.items() if key in name), None)
        if nominal:
            line += f", {achieved / nominal:.0%} of the nominal {nominal / 1e12:.2f} TB/s"
        print(line)
    if len(rates) > 1:
        lo, hi = min(rates), max(rates)
        print(f"batch {hi} / batch {lo} throughput: {rates[hi] / rates[lo]:.1f}x")


if __name__ == "__main__":
    main()
