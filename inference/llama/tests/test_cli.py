from __future__ import annotations

import json
import shutil

import pytest

from inference.llama.__main__ import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_prints_the_completion(capsys, demo_dir):
    code, out, _ = run(
        capsys, "generate", "--ckpt", str(demo_dir), "--prompt", "The old keeper",
        "--temperature", "0", "--max-new-tokens", "12",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("The old keeper ")
    assert len(out.split()) > 5


def test_generate_json_for_a_batch(capsys, demo_dir):
    code, out, _ = run(
        capsys, "generate", "--ckpt", str(demo_dir), "--prompt", "The old keeper",
        "--prompt", "In winter", "--json", "--seed", "3", "--max-new-tokens", "8",
        "--stop", "zzz", "--dtype", "bfloat16", "--threads", "1",
    )  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["prompt"] for d in lines] == ["The old keeper", "In winter"]
    for d in lines:
        assert d["prompt_tokens"][0] == 1  # BOS
        assert len(d["tokens"]) == len(d["logprobs"]) == 8
        assert d["finish_reason"] == "length"
        assert isinstance(d["text"], str)
    # --seed makes sampling reproducible from the command line
    _, again, _ = run(
        capsys, "generate", "--ckpt", str(demo_dir), "--prompt", "The old keeper",
        "--prompt", "In winter", "--json", "--seed", "3", "--max-new-tokens", "8",
        "--stop", "zzz", "--dtype", "bfloat16", "--threads", "1",
    )  # fmt: skip
    assert again == out


@pytest.mark.slow
def test_generate_with_tensor_parallel_processes(capfd, demo_dir):
    args = ["generate", "--ckpt", str(demo_dir), "--prompt", "The old keeper",
            "--temperature", "0", "--max-new-tokens", "10", "--json"]  # fmt: skip
    assert main(args) == 0
    single = json.loads(capfd.readouterr().out)
    assert main([*args, "--tp", "2"]) == 0
    parallel = json.loads(capfd.readouterr().out)  # printed by rank 0's process
    assert parallel["tokens"] == single["tokens"]
    assert parallel["text"] == single["text"]


def test_info_and_verify(capsys, demo_dir):
    code, out, _ = run(capsys, "info", "--ckpt", str(demo_dir))
    info = json.loads(out)
    assert code == 0
    assert info["vocab_size"] == 1024
    assert info["shards"] == ["consolidated.00.pth", "consolidated.01.pth"]
    code, out, _ = run(capsys, "verify", "--ckpt", str(demo_dir))
    assert code == 0
    assert out.startswith("OK: 4 files match")


def test_errors_are_one_line_and_exit_2(capsys, tmp_path, demo_dir):
    broken = tmp_path / "ckpt"
    shutil.copytree(demo_dir, broken)
    (broken / "consolidated.01.pth").unlink()
    code, _, err = run(capsys, "generate", "--ckpt", str(broken), "--prompt", "x")
    assert code == 2
    assert err.startswith("error: ") and "consolidated.01.pth" in err
    code, _, err = run(
        capsys, "generate", "--ckpt", str(demo_dir), "--prompt", "x", "--max-new-tokens", "5000"
    )
    assert code == 2
    assert "context length" in err
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", str(demo_dir)])  # no prompt
