"""The SentencePiece tokenizer, with BOS/EOS handled as in the original release.

`encode(text, bos=True, eos=False)` prepends BOS (1) and optionally appends EOS (2);
`decode(ids)` is SentencePiece's own decoding. `decode_continuation` exists because
SentencePiece drops the leading space of the first piece it decodes: the text of
generated tokens alone would lose the space between the prompt and its continuation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm


class Tokenizer:
    def __init__(self, model_path: str | Path | None = None, *, model_proto: bytes | None = None):
        if (model_path is None) == (model_proto is None):
            raise ValueError("give exactly one of model_path or model_proto")
        self.sp = spm.SentencePieceProcessor()
        if model_proto is not None:
            self.sp.LoadFromSerializedProto(model_proto)
            self.path: Path | None = None
        else:
            path = Path(model_path)  # type: ignore[arg-type]
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer model not found: {path}")
            self.sp.Load(str(path))
            self.path = path
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()

    @property
    def vocab_size(self) -> int:
        return self.n_words

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids: list[int] = self.sp.encode(text)
        if bos:
            ids = [self.bos_id, *ids]
        if eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def decode_continuation(self, context: Sequence[int], ids: Sequence[int]) -> str:
        """Text of `ids` as it reads after `context` (the prompt's last few tokens).

        Decodes context+ids and removes the context's own text, which keeps the space a
        continuation starts with. Falls back to plain decoding when the context does not
        decode to a prefix (an incomplete UTF-8 byte sequence at its end, for instance).
        """
        context = [t for t in context if t not in (self.bos_id, self.eos_id)]
        if not context:
            return self.decode(ids)
        head = self.decode(context)
        both = self.decode([*context, *ids])
        if both.startswith(head):
            return both[len(head) :]
        return self.decode(ids)

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)
