from __future__ import annotations

import json

import torch

from inference.llama.checkpoint import load_model, verify
from inference.llama.demo import build_demo_checkpoint


def test_the_demo_checkpoint_has_the_original_layout(demo_dir):
    names = sorted(p.name for p in demo_dir.iterdir())
    assert names == [
        "checklist.chk",
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
        "tokenizer.model",
    ]
    params = json.loads((demo_dir / "params.json").read_text())
    # Exactly the keys of a LLaMA 1 params.json, so the original code would load it too.
    assert sorted(params) == ["dim", "multiple_of", "n_heads", "n_layers", "norm_eps", "vocab_size"]
    assert params["vocab_size"] == -1
    shard = torch.load(demo_dir / "consolidated.00.pth", weights_only=True)
    assert shard["output.weight"].dtype == torch.float16  # as the originals were released
    assert verify(demo_dir) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
        "tokenizer.model",
    ]


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_demo_checkpoint(a, seed=5, steps=3)
    build_demo_checkpoint(b, seed=5, steps=3)
    build_demo_checkpoint(c, seed=6, steps=3)
    assert (a / "checklist.chk").read_text() == (b / "checklist.chk").read_text()
    assert (a / "consolidated.00.pth").read_bytes() != (c / "consolidated.00.pth").read_bytes()


def test_shard_counts_hold_the_same_model(tmp_path):
    for n in (1, 4, 8):
        build_demo_checkpoint(tmp_path / str(n), shards=n, seed=1, steps=2)
    merged = [load_model(tmp_path / str(n)).state_dict() for n in (1, 4, 8)]
    for other in merged[1:]:
        assert all(torch.equal(other[k], v) for k, v in merged[0].items())


def test_the_management_command_wraps_the_builder(tmp_path):
    from inference.management.commands.make_demo_checkpoint import Command

    command = Command()
    parser = command.create_parser("manage.py", "make_demo_checkpoint")
    options = vars(parser.parse_args([str(tmp_path / "demo"), "--shards", "2", "--seed", "4",
                                      "--steps", "2"]))  # fmt: skip
    command.execute(**options)
    assert sorted(p.name for p in (tmp_path / "demo").glob("*.pth")) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
    ]
    build_demo_checkpoint(tmp_path / "direct", shards=2, seed=4, steps=2)
    assert (tmp_path / "demo" / "checklist.chk").read_text() == (
        tmp_path / "direct" / "checklist.chk"
    ).read_text()
