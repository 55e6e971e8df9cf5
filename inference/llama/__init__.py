"""The LLaMA inference engine: plain PyTorch + SentencePiece, no Django.

Load a checkpoint in the original release layout and generate:

    from inference.llama import Llama, SamplingParams
    llama = Llama.load("path/to/7B", device="cuda", dtype="float16")
    llama.generate(["The capital of France is"], SamplingParams(max_new_tokens=16))

See README.md beside this file for the step-wise `BatchDecoder` and the command line.

Importing this package loads nothing heavy: each name below is imported from its module on
first use (PEP 562), so the web process can read `inference.llama.layout` without torch,
and torch is loaded only when a model, a tokenizer or the decoder is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "layout",
    "ChecksumError": "layout",
    "MissingFileError": "layout",
    "MissingShardError": "layout",
    "ShapeMismatchError": "layout",
    "VocabSizeError": "layout",
    "load_model": "checkpoint",
    "load_tokenizer": "checkpoint",
    "verify": "checkpoint",
    "Llama": "engine",
    "resolve_dtype": "engine",
    "BatchDecoder": "generation",
    "Cancel": "generation",
    "Completion": "generation",
    "ContextLengthError": "generation",
    "GenerationError": "generation",
    "Request": "generation",
    "SamplingParams": "generation",
    "TokenEvent": "generation",
    "generate": "generation",
    "ModelArgs": "model",
    "Transformer": "model",
    "Parallel": "parallel",
    "Tokenizer": "tokenizer",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from .checkpoint import load_model, load_tokenizer, verify
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
    from .layout import (
        CheckpointError,
        ChecksumError,
        MissingFileError,
        MissingShardError,
        ShapeMismatchError,
        VocabSizeError,
    )
    from .model import ModelArgs, Transformer
    from .parallel import Parallel
    from .tokenizer import Tokenizer
