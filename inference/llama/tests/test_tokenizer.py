from __future__ import annotations

import hashlib

import pytest

from inference.llama.tests.conftest import LLAMA_TOKENIZER
from inference.llama.tokenizer import Tokenizer


def test_the_tokenizer_in_the_test_data_is_the_released_one():
    data = LLAMA_TOKENIZER.read_bytes()
    # The MD5 of the original release's tokenizer_checklist.chk (testdata/llama-tokenizer/).
    assert (
        hashlib.md5(data, usedforsecurity=False).hexdigest() == "eeec4125e9c7560836b4873b6f8e3025"
    )
    assert hashlib.sha256(data).hexdigest() == (
        "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
    )


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [15043, 3186]),
        ("The capital of France is", [450, 7483, 310, 3444, 338]),
        ("Привет мир", [7203, 7616, 4157, 29927]),
    ],
)
def test_the_original_tokenizer_gives_the_known_ids(llama_tokenizer, text, ids):
    assert llama_tokenizer.encode(text, bos=False, eos=False) == ids
    assert llama_tokenizer.encode(text) == [1, *ids]  # BOS by default, no EOS
    assert llama_tokenizer.encode(text, bos=True, eos=True) == [1, *ids, 2]
    assert llama_tokenizer.decode([1, *ids, 2]) == text


def test_the_original_tokenizer_special_ids(llama_tokenizer):
    t = llama_tokenizer
    assert (t.n_words, t.bos_id, t.eos_id, t.pad_id) == (32000, 1, 2, -1)
    assert t.sp.unk_id() == 0


def test_a_continuation_keeps_its_leading_space(llama_tokenizer):
    t = llama_tokenizer
    prompt = t.encode("The capital of France is")
    paris = t.encode(" Paris", bos=False)[-1:]  # "▁Paris"
    assert t.decode(paris) == "Paris"  # SentencePiece drops the first piece's space
    assert t.decode_continuation(prompt[-4:], paris) == " Paris"
    assert t.decode_continuation([1], paris) == "Paris"  # at the start of the text


def test_a_tokenizer_loads_from_bytes(demo_dir):
    proto = (demo_dir / "tokenizer.model").read_bytes()
    t = Tokenizer(model_proto=proto)
    assert (t.n_words, t.bos_id, t.eos_id, t.pad_id) == (1024, 1, 2, -1)
    assert t.decode(t.encode("The old keeper")) == "The old keeper"
    # byte fallback: characters the demo text never had still round-trip
    assert t.decode(t.encode("Привет ✓")) == "Привет ✓"
    with pytest.raises(FileNotFoundError):
        Tokenizer("/nonexistent/tokenizer.model")
