"""Command line: `python -m inference.llama {generate,info,verify,demo} ...`.

    python -m inference.llama generate --ckpt ~/llama/7B --prompt "The capital of France is"
    python -m inference.llama generate --ckpt DIR --prompt A --prompt B --json --seed 1
    python -m inference.llama generate --ckpt ~/llama/65B --tp 8      # one process per GPU
    python -m inference.llama generate --ckpt DIR --dtype bfloat16 --quantize int8 --prompt A
    torchrun --nproc-per-node 8 -m inference.llama generate --ckpt ~/llama/65B --prompt ...
    python -m inference.llama demo /tmp/demo --shards 2
    python -m inference.llama export-hf ~/llama/7B ~/llama/7B-hf    # for transformers

Defaults follow the original release's example script (temperature 0.8, top-p 0.95).
With --json every completion is printed as one JSON line: prompt, prompt_tokens, tokens,
text, finish_reason and per-token logprobs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference.llama",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="complete prompts with a checkpoint")
    gen.add_argument("--ckpt", required=True, type=Path, help="checkpoint directory")
    gen.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    gen.add_argument("--prompt-file", type=Path, help="one prompt per line")
    gen.add_argument("--tokenizer", type=Path, help="default: tokenizer.model in or above --ckpt")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    gen.add_argument("--seed", type=int, help="makes sampling reproducible")
    gen.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    gen.add_argument("--echo", action="store_true", help="include the prompt in the text")
    gen.add_argument("--logprobs", action="store_true", help="per-token log-probabilities")
    gen.add_argument("--json", action="store_true", help="one JSON line per completion")
    gen.add_argument(
        "--dtype", default="auto", help="auto, float32, bfloat16, float16 (activations, cache)"
    )
    gen.add_argument(
        "--quantize",
        choices=["none", "int8", "q8_0"],
        default="none",
        help="int8: weight-only int8, a scale per 32 input columns (Q8_0's layout); q8_0: the "
        "same weights, decode activations rounded to int8 too (llama.cpp's q8_0, faster)",
    )
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda")
    gen.add_argument("--max-seq-len", type=int, help="context length (default 2048)")
    gen.add_argument("--max-batch-size", type=int, default=8)
    gen.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    gen.add_argument("--tp", type=int, default=1, help="tensor-parallel processes")
    gen.add_argument("--manifest", type=Path, help="JSON {file: sha256} to verify against")
    gen.add_argument("--no-verify", action="store_true", help="skip checklist.chk")

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("--ckpt", required=True, type=Path)

    ver = sub.add_parser("verify", help="check files against checklist.chk or a manifest")
    ver.add_argument("--ckpt", required=True, type=Path)
    ver.add_argument("--manifest", type=Path)

    demo = sub.add_parser("demo", help="write the tiny demo checkpoint")
    demo.add_argument("out", type=Path)
    demo.add_argument("--shards", type=int, default=1)
    demo.add_argument("--seed", type=int, default=0)

    hf = sub.add_parser("export-hf", help="write a transformers folder (LlamaForCausalLM)")
    hf.add_argument("ckpt", type=Path, help="checkpoint directory (original layout)")
    hf.add_argument("out", type=Path, help="output folder")
    hf.add_argument("--dtype", default="float16", help="float16 (default), bfloat16, float32")
    hf.add_argument("--tokenizer", type=Path, help="default: tokenizer.model in or above ckpt")
    return parser


def _prompts(ns: argparse.Namespace) -> list[str]:
    prompts = list(ns.prompt or [])
    if ns.prompt_file:
        prompts += [line for line in ns.prompt_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("generate: give --prompt or --prompt-file")
    return prompts


def _device(name: str, rank: int = 0) -> str:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return name


def _run_generate(ns: argparse.Namespace, parallel: Any = None) -> int:
    import torch

    from .engine import Llama
    from .generation import BatchDecoder, SamplingParams, TokenEvent

    if ns.threads:
        torch.set_num_threads(ns.threads)
    rank = parallel.rank if parallel is not None else 0
    device = _device(ns.device, rank)
    ckpt: Path = ns.ckpt
    verify = not ns.no_verify and ns.manifest is None and (ckpt / "checklist.chk").is_file()
    llama = Llama.load(
        ckpt,
        device=device,
        dtype=ns.dtype,
        max_seq_len=ns.max_seq_len,
        tokenizer=ns.tokenizer,
        verify=verify and rank == 0,
        manifest=ns.manifest,
        parallel=parallel,
        quantize=None if ns.quantize == "none" else ns.quantize,
    )
    decoder = BatchDecoder(llama.model, llama.tokenizer, max_batch_size=ns.max_batch_size)
    if rank != 0:
        decoder.follow()
        return 0
    prompts = _prompts(ns)
    params = SamplingParams(
        max_new_tokens=ns.max_new_tokens,
        temperature=ns.temperature,
        top_p=ns.top_p,
        top_k=ns.top_k,
        seed=ns.seed,
        stop=tuple(ns.stop),
        echo=ns.echo,
        logprobs=ns.logprobs or ns.json,
    )
    stream = len(prompts) == 1 and not ns.json

    def show(event: TokenEvent) -> None:
        sys.stdout.write(event.text)
        sys.stdout.flush()

    try:
        for i, prompt in enumerate(prompts):
            decoder.add(prompt, params, request_id=i, callback=show if stream else None)
        if stream:
            sys.stdout.write(prompts[0])
        results = {c.request_id: c for c in decoder.run()}
    finally:
        decoder.close()
    for i in range(len(prompts)):
        c = results[i]
        if ns.json:
            print(json.dumps(c.to_dict(), ensure_ascii=False))
        elif stream:
            print()
        else:
            print(f"{c.text if ns.echo else prompts[i] + c.text}\n[{c.finish_reason}]\n")
    return 0


def _tp_entry(parallel: Any, ns: argparse.Namespace) -> None:
    _run_generate(ns, parallel)


def cmd_generate(ns: argparse.Namespace) -> int:
    from . import parallel

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        par = parallel.init()
        try:
            return _run_generate(ns, par)
        finally:
            parallel.shutdown()
    if ns.tp > 1:
        _prompts(ns)  # fail before starting processes
        # By its importable name: under `python -m` this module is __main__, which a
        # spawned child could not unpickle a function from.
        from . import __main__ as cli

        parallel.spawn(cli._tp_entry, ns.tp, ns)
        return 0
    return _run_generate(ns)


def cmd_info(ns: argparse.Namespace) -> int:
    from .checkpoint import find_tokenizer, read_params, resolve_args, shard_paths
    from .tokenizer import Tokenizer

    params = read_params(ns.ckpt)
    tok_path = find_tokenizer(ns.ckpt)
    tok = Tokenizer(tok_path) if tok_path else None
    args = resolve_args(params, tok)
    shards = shard_paths(ns.ckpt)
    info = {
        "params": params,
        "vocab_size": args.vocab_size,
        "head_dim": args.head_dim,
        "kv_heads": args.kv_heads,
        "ffn_hidden_dim": args.hidden_dim,
        "n_params": args.n_params(),
        "shards": [p.name for p in shards],
        "tokenizer": str(tok_path) if tok_path else None,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_verify(ns: argparse.Namespace) -> int:
    from .checkpoint import verify

    names = verify(ns.ckpt, ns.manifest)
    print(f"OK: {len(names)} files match ({', '.join(names)})")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import build_demo_checkpoint

    build_demo_checkpoint(ns.out, shards=ns.shards, seed=ns.seed, log=print)
    return 0


def cmd_export_hf(ns: argparse.Namespace) -> int:
    from .export import export_hf

    out = export_hf(ns.ckpt, ns.out, dtype=ns.dtype, tokenizer=ns.tokenizer)
    print(
        f"wrote {out}: LlamaForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load it"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .generation import GenerationError

    ns = _parser().parse_args(argv)
    commands = {
        "generate": cmd_generate,
        "info": cmd_info,
        "verify": cmd_verify,
        "demo": cmd_demo,
        "export-hf": cmd_export_hf,
    }
    try:
        return commands[ns.command](ns)
    except (CheckpointError, GenerationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
