from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from inference.llama import checkpoint
from inference.llama.checkpoint import (
    CheckpointError,
    ChecksumError,
    MissingFileError,
    MissingShardError,
    ShapeMismatchError,
    VocabSizeError,
    load_model,
    merge_shards,
    split_dim,
    split_state_dict,
    verify,
)
from inference.llama.generation import SamplingParams, generate
from inference.llama.hf import to_transformers
from inference.llama.model import ModelArgs

from .conftest import TINY, random_model, write_random_checkpoint

TOKENS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_loaded_checkpoint_matches_transformers(tmp_path, shards):
    original = random_model(seed=shards)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    checkpoint.save_checkpoint(tmp_path, state, TINY, shards=shards)
    assert len(list(tmp_path.glob("consolidated.*.pth"))) == shards

    model = load_model(tmp_path, max_seq_len=128)
    hf = to_transformers(original)
    with torch.no_grad():
        ours, theirs = model(TOKENS), hf(TOKENS).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    prompts = [TOKENS[0, :5].tolist(), TOKENS[1, :9].tolist()]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    completions = generate(model, None, prompts, params)
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=12,
                min_new_tokens=12,
                do_sample=False,
                pad_token_id=0,
            )
        assert completion.tokens == out[0, len(prompt) :].tolist()


def test_shards_follow_the_split_rule_of_the_original_release(tmp_path):
    state = write_random_checkpoint(tmp_path, shards=2)
    shard = torch.load(tmp_path / "consolidated.01.pth", weights_only=True)
    dim, vocab = 64, 256
    for key, full in state.items():
        part = shard[key]
        if key.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")):
            assert part.shape == (full.shape[0] // 2, full.shape[1])
            torch.testing.assert_close(part, full[full.shape[0] // 2 :], rtol=0, atol=0)
        elif key.endswith(("wo.weight", "w2.weight")):
            assert part.shape == (full.shape[0], full.shape[1] // 2)
        elif key == "tok_embeddings.weight":
            assert part.shape == (vocab, dim // 2)
        elif key == "output.weight":
            assert part.shape == (vocab // 2, dim)
        else:
            assert key.endswith("norm.weight")
            torch.testing.assert_close(part, full, rtol=0, atol=0)
    assert split_dim("layers.31.attention.wo.weight") == 1
    assert split_dim("layers.0.ffn_norm.weight") is None
    with pytest.raises(CheckpointError, match="no model-parallel split rule"):
        split_dim("layers.0.attention.bias")


def test_vocabulary_parallel_embeddings_also_merge():
    # LLaMA 3 splits tok_embeddings on the vocabulary (dim 0); the shapes tell them apart.
    state = random_model().state_dict()
    shards = split_state_dict(state, 2)
    for i, shard in enumerate(shards):
        shard["tok_embeddings.weight"] = state["tok_embeddings.weight"].chunk(2, dim=0)[i]
    merged = merge_shards(shards, ModelArgs.from_params(TINY))
    assert torch.equal(merged["tok_embeddings.weight"], state["tok_embeddings.weight"])


def test_shards_are_memory_mapped_and_rope_freqs_ignored(tmp_path, monkeypatch):
    state = write_random_checkpoint(tmp_path)
    # LLaMA 1 shards carry a `rope.freqs` buffer: derived data the loader skips.
    saved = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    saved["rope.freqs"] = torch.ones(4)
    torch.save(saved, tmp_path / "consolidated.00.pth")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_model(tmp_path)
    assert calls == [{"map_location": "cpu", "mmap": True, "weights_only": True}]
    assert torch.equal(model.state_dict()["output.weight"], state["output.weight"])
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weights_load_in_the_requested_dtype(tmp_path, dtype):
    write_random_checkpoint(tmp_path, shards=2)
    model = load_model(tmp_path, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model(TOKENS[:, :4]).dtype == torch.float32


def test_vocab_size_minus_one_is_taken_from_the_tokenizer(demo_dir, demo_tokenizer):
    assert json.loads((demo_dir / "params.json").read_text())["vocab_size"] == -1
    model = load_model(demo_dir)
    assert model.args.vocab_size == demo_tokenizer.n_words == 1024


def test_tokenizer_is_also_found_beside_the_size_folders(tmp_path, demo_dir):
    # The original release kept tokenizer.model above 7B/, 13B/, ...
    size_dir = tmp_path / "7B"
    shutil.copytree(demo_dir, size_dir)
    (size_dir / "tokenizer.model").rename(tmp_path / "tokenizer.model")
    (size_dir / "checklist.chk").unlink()
    assert load_model(size_dir).args.vocab_size == 1024


def test_a_missing_shard_is_named(tmp_path):
    write_random_checkpoint(tmp_path, shards=4)
    (tmp_path / "consolidated.03.pth").unlink()  # the last one: only checklist.chk knows
    with pytest.raises(MissingShardError, match=r"consolidated\.03\.pth"):
        load_model(tmp_path)
    (tmp_path / "checklist.chk").unlink()
    (tmp_path / "consolidated.01.pth").unlink()  # a gap in the numbering
    with pytest.raises(MissingShardError, match=r"missing shard\(s\) consolidated\.01\.pth"):
        load_model(tmp_path)


def test_shards_that_disagree_on_a_shape_are_refused(tmp_path):
    write_random_checkpoint(tmp_path, shards=2)
    path = tmp_path / "consolidated.01.pth"
    shard = torch.load(path, weights_only=True)
    shard["layers.1.attention.wq.weight"] = shard["layers.1.attention.wq.weight"][:-8]
    torch.save(shard, path)
    with pytest.raises(ShapeMismatchError, match=r"layers\.1\.attention\.wq\.weight"):
        load_model(tmp_path)


def test_weights_that_do_not_fit_params_json_are_refused(tmp_path):
    write_random_checkpoint(tmp_path, shards=2)
    params = json.loads((tmp_path / "params.json").read_text())
    (tmp_path / "params.json").write_text(json.dumps({**params, "multiple_of": 32}))
    with pytest.raises(ShapeMismatchError, match=r"feed_forward\.w1\.weight has shape"):
        load_model(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing \['layers\.2\."):
        load_model(tmp_path)


def test_a_wrong_vocab_size_is_refused(tmp_path, demo_dir):
    write_random_checkpoint(tmp_path)
    params = json.loads((tmp_path / "params.json").read_text())
    (tmp_path / "params.json").write_text(json.dumps({**params, "vocab_size": 512}))
    with pytest.raises(VocabSizeError, match="tok_embeddings has 256 rows"):
        load_model(tmp_path)
    # A tokenizer whose size disagrees with params.json
    shutil.copy(demo_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    with pytest.raises(VocabSizeError, match="tokenizer has 1024 pieces"):
        load_model(tmp_path)
    # vocab_size -1 with the wrong tokenizer: the weights disagree
    (tmp_path / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))
    with pytest.raises(VocabSizeError, match="vocabulary has 1024 tokens"):
        load_model(tmp_path)


def test_checklist_verification(tmp_path):
    write_random_checkpoint(tmp_path, shards=2)
    assert verify(tmp_path) == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    load_model(tmp_path, verify_files=True)
    with open(tmp_path / "consolidated.01.pth", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"corruption")
    with pytest.raises(ChecksumError, match=r"consolidated\.01\.pth: checksum"):
        load_model(tmp_path, verify_files=True)


def test_sha256_manifest_verification(tmp_path):
    write_random_checkpoint(tmp_path)
    manifest = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tmp_path.iterdir()
        if p.name != "checklist.chk"
    }
    load_model(tmp_path, manifest=manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert verify(tmp_path, tmp_path / "manifest.json") == ["consolidated.00.pth", "params.json"]
    bad = {**manifest, "params.json": "0" * 64}
    with pytest.raises(ChecksumError, match=r"params\.json"):
        load_model(tmp_path, manifest=bad)
    with pytest.raises(MissingShardError, match=r"consolidated\.01\.pth"):
        load_model(tmp_path, manifest={**manifest, "consolidated.01.pth": "0" * 64})


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(MissingFileError, match=r"params\.json"):
        load_model(tmp_path)
    write_random_checkpoint(tmp_path)
    (tmp_path / "checklist.chk").unlink()
    with pytest.raises(MissingFileError, match=r"checklist\.chk"):
        verify(tmp_path)
    for p in tmp_path.glob("*.pth"):
        p.unlink()
    with pytest.raises(MissingShardError, match="no consolidated"):
        load_model(tmp_path)


def test_split_then_merge_is_the_identity():
    state = random_model().state_dict()
    for n in (2, 4):
        merged = merge_shards(split_state_dict(state, n), ModelArgs.from_params(TINY))
        assert all(torch.equal(merged[k], v) for k, v in state.items())


def test_save_writes_the_original_layout(tmp_path: Path):
    write_random_checkpoint(tmp_path, shards=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checklist.chk", "consolidated.00.pth", "consolidated.01.pth", "params.json"]
    lines = (tmp_path / "checklist.chk").read_text().splitlines()
    digest, name = lines[0].split()
    assert name == "consolidated.00.pth"
    assert digest == hashlib.md5((tmp_path / name).read_bytes(), usedforsecurity=False).hexdigest()
