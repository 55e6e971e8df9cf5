"""`Llama`: a loaded model and its tokenizer, the one object a worker needs.

llama = Llama.load("/ckpt/7B", device="cuda", dtype="float16")
llama = Llama.load("/ckpt/7B", quantize="int8")   # weight-only int8, float32 activations
[c] = llama.generate(["The capital of France is"], SamplingParams(max_new_tokens=8))

decoder = llama.decoder(max_batch_size=8)       # continuous batching
rid = decoder.add(prompt, params, callback=on_token)
while decoder.has_work():
    for completion in decoder.step(): ...
decoder.cancel(rid)                              # any thread, takes effect next step
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import load_model, load_tokenizer
from .generation import BatchDecoder, Completion, SamplingParams, TokenCallback, generate
from .kernels import QUANT_MODES
from .model import Transformer
from .parallel import Parallel
from .tokenizer import Tokenizer

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(
    dtype: str | torch.dtype, device: str | torch.device = "cpu", quantize: str | None = None
) -> torch.dtype:
    """A torch dtype from a name; "auto" is float32 on the CPU (int8 weights included:
    their kernel accumulates in float32), bfloat16 (or float16 where the GPU lacks it)
    on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}") from None


class Llama:
    def __init__(self, model: Transformer, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def load(
        cls,
        ckpt_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        max_seq_len: int | None = None,
        tokenizer: Tokenizer | str | Path | None = None,
        verify: bool = False,
        manifest: Mapping[str, str] | str | Path | None = None,
        parallel: Parallel | None = None,
        quantize: str | None = None,
    ) -> Llama:
        """Load a checkpoint; the inference form of the weights (fused projections, packed
        for oneDNN on the CPU, int8 when `quantize="int8"`) is built here, the files are
        not changed."""
        if quantize is not None and quantize not in QUANT_MODES:
            modes = ", ".join(QUANT_MODES)
            raise ValueError(f"unknown quantization {quantize!r}; one of {modes}")
        tok = load_tokenizer(ckpt_dir, tokenizer)
        model = load_model(
            ckpt_dir,
            tokenizer=tok,
            device=device,
            dtype=resolve_dtype(dtype, device, quantize),
            max_seq_len=max_seq_len,
            verify_files=verify,
            manifest=manifest,
            parallel=parallel,
        )
        # On the CPU, float32 and bfloat16 weights go into oneDNN's layout (see
        # Transformer.prepare); state_dict() still gives the checkpoint's tensors.
        return cls(model.prepare(quantize, pack=True), tok)

    def decoder(self, max_batch_size: int = 8, max_seq_len: int | None = None) -> BatchDecoder:
        return BatchDecoder(
            self.model, self.tokenizer, max_batch_size=max_batch_size, max_seq_len=max_seq_len
        )

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        max_batch_size: int | None = None,
        callback: TokenCallback | None = None,
    ) -> list[Completion]:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            params,
            max_batch_size=max_batch_size,
            callback=callback,
        )
