"""The LLaMA inference engine: plain PyTorch + SentencePiece, no Django.

Load a checkpoint in the original release layout and generate:

    from inference.llama import Llama, SamplingParams
    llama = Llama.load("path/to/7B", device="cuda", dtype="float16")
    llama.generate(["The capital of France is"], SamplingParams(max_new_tokens=16))

See README.md beside this file for the step-wise `BatchDecoder` and the command line.
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointError,
    ChecksumError,
    MissingFileError,
    MissingShardError,
    ShapeMismatchError,
    VocabSizeError,
    load_model,
    load_tokenizer,
    verify,
)
from .engine import Llama, resolve_dtype
from .generation import (
    BatchDecoder,
    Cancel,
    Completion,
    ContextLengthError,
    GenerationError,
    Request,
    SamplingParams,
    TokenEvent,
    generate,
)
from .model import ModelArgs, Transformer
from .parallel import Parallel
from .tokenizer import Tokenizer

__all__ = [
    "BatchDecoder",
    "Cancel",
    "CheckpointError",
    "ChecksumError",
    "Completion",
    "ContextLengthError",
    "GenerationError",
    "Llama",
    "MissingFileError",
    "MissingShardError",
    "ModelArgs",
    "Parallel",
    "Request",
    "SamplingParams",
    "ShapeMismatchError",
    "TokenEvent",
    "Tokenizer",
    "Transformer",
    "VocabSizeError",
    "generate",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "verify",
]
