"""GPU decode throughput of the LLaMA engine on a 7B-shaped model, with CUDA graphs.

    .venv/bin/python bench/engine_gpu.py              # CUDA: checks, then 7B float16
    .venv/bin/python bench/engine_gpu.py --dry-run    # a tiny shape, on the CPU if no CUDA

One script for a session that is lent a GPU: it first checks the device path (a tiny
model's float16 logits against float32 on the same device, prefill + decode against the
full forward, graph replay against eager decode), then measures.

Weights are random (normal, std 0.02) and made on the device itself, so no checkpoint is
needed; `Transformer.prepare()` fuses q/k/v and gate/up as loading does. Decode runs as
`Transformer.decode(..., static=True)`: every step attends over the whole (small) cache
under a mask, so its shapes never change and one CUDA graph per batch size captures the
whole step; the loop feeds each step's argmax back on the device, with no host sync
until the end. Tokens per second at batch 1 and 16 = rows x steps / time, prefill
excluded. The fraction of the memory-bandwidth limit: weight bytes read per step (all
but the embedding table; the cache is small next to them) times batch-1 steps per
second, over (a) a device-to-device copy measured here (read + write bytes) and (b) the
card's nominal figure when its name is known. Goal: batch 1 at least 70% of nominal.

Without CUDA (or with --dry-run) the same code runs eagerly on a tiny shape on the CPU:
it proves the script, not the speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.llama.model import KVCache, ModelArgs, Transformer

SEVEN_B = ModelArgs(
    dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, max_seq_len=2048
)
TINY = ModelArgs(dim=256, n_layers=4, n_heads=8, vocab_size=32000, multiple_of=64, max_seq_len=512)
CHECK = ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32)

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
    return model.eval().requires_grad_(False).prepare()


class StaticDecoder:
    """Greedy decode of a batch with fixed shapes: eager, or one CUDA graph replayed."""

    def __init__(self, model: Transformer, batch: int, max_len: int, graphs: bool):
        self.model = model
        self.device = model.device
        self.cache: KVCache = model.new_cache(batch, max_len)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graphs = graphs and self.device.type == "cuda"

    def _step(self) -> torch.Tensor:
        return self.model.decode(self.tokens, self.positions, self.cache, static=True)

    def start(self, prompts: torch.Tensor) -> None:
        """Prefill, then (CUDA) warm up on a side stream and capture the step."""
        batch, plen = prompts.shape
        last = torch.full((batch,), plen - 1, device=self.device)
        logits = self.model.prefill(prompts, self.cache, slice(0, batch), last)
        self.tokens.copy_(logits.argmax(-1))
        self.positions.fill_(plen)
        if not self.graphs:
            return
        # Warm-up steps (allocator, kernel choice) on a side stream, as capture needs; they
        # write the same cache cells the first real step will overwrite.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def step(self) -> torch.Tensor:
        """One decode step; feeds its greedy tokens to the next. Returns the logits."""
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._step()
        assert logits is not None
        self.tokens.copy_(logits.argmax(-1))
        self.positions.add_(1)
        return logits


def decode_rate(
    model: Transformer, batch: int, prompt_len: int, new_tokens: int, graphs: bool
) -> float:
    """Decoded tokens per second over all rows, prefill excluded."""
    gen = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, model.args.vocab_size, (batch, prompt_len), generator=gen)
    dec = StaticDecoder(model, batch, prompt_len + new_tokens + 1, graphs)
    with torch.inference_mode():
        dec.start(prompts.to(model.device))
        dec.step()  # the first replay pays for lazy work
        sync(model.device)
        t = time.perf_counter()
        for _ in range(new_tokens - 1):
            dec.step()
        sync(model.device)
    return batch * (new_tokens - 1) / (time.perf_counter() - t)


def checks(device: torch.device, graphs: bool, say: Callable[[str], None]) -> None:
    """The device path gives the CPU's answers: raises AssertionError where it does not."""
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    ref = random_model(CHECK, device, torch.float32)
    low = random_model(CHECK, device, half)
    gen = torch.Generator().manual_seed(1)
    toks = torch.randint(0, CHECK.vocab_size, (3, 24), generator=gen).to(device)
    with torch.inference_mode():
        full = ref(toks)
        err = ((low(toks) - full).abs().max() / full.abs().max()).item()
        cache = ref.new_cache(3, 32)
        ref.prefill(toks[:, :16], cache, torch.arange(3, device=device), None)
        pos16 = torch.full((3,), 16, device=device)
        steps = [ref.decode(toks[:, 16], pos16, cache, span=17)]
        steps += [
            ref.decode(toks[:, t], torch.full((3,), t, device=device), cache, static=True)
            for t in range(17, 24)
        ]
        cached = (torch.stack(steps, 1) - full[:, 16:]).abs().max().item()
        # Graph replay against eager steps from the same prompt.
        eager, replay = StaticDecoder(ref, 3, 40, False), StaticDecoder(ref, 3, 40, graphs)
        eager.start(toks[:, :16])
        replay.start(toks[:, :16])
        graph_err = max((eager.step() - replay.step()).abs().max().item() for _ in range(8))
    say(
        f"checks on {device}: {str(half)[6:]} logits {err:.2%} of max from float32 (bound 3%); "
        f"cached decode vs full forward {cached:.1e} (bound 1e-4); "
        f"{'graph replay' if replay.graph is not None else 'static eager'} vs eager "
        f"{graph_err:.1e} (bound 1e-4)"
    )
    assert err < 0.03 and cached < 1e-4 and graph_err < 1e-4


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", "--tiny", action="store_true", help="tiny shape; CPU if no CUDA")
    ap.add_argument("--dtype", default=None, help="default float16 on CUDA, float32 on CPU")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--no-graphs", action="store_true", help="eager steps, for comparison")
    ns = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    graphs = cuda and not ns.no_graphs
    args = TINY if ns.dry_run or not cuda else SEVEN_B
    dtype_name = ns.dtype or ("float16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    if not cuda:
        print("no CUDA device: a dry run of the tiny shape on the CPU (eager, no graphs)")
    checks(device, graphs, print)

    model = random_model(args, device, dtype)
    n_params = args.n_params()
    weight_bytes = model.weight_bytes()
    print(
        f"device: {name}; model: {n_params / 1e9:.2f}B parameters "
        f"(dim {args.dim}, {args.n_layers} layers), {dtype_name}, "
        f"{'CUDA graphs' if graphs else 'eager'}; prompt {ns.prompt_len} + "
        f"{ns.new_tokens} new tokens; weights read per step {weight_bytes / 1e9:.2f} GB"
    )
    rates = {}
    for batch in (int(b) for b in ns.batches.split(",")):
        decode_rate(model, batch, 8, 4, graphs)  # warm-up: kernels, allocator
        rates[batch] = decode_rate(model, batch, ns.prompt_len, ns.new_tokens, graphs)
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
