"""The one reading of the release layout, shared by the engine and the publisher."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from inference.llama import layout
from inference.llama.checkpoint import verify

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_engine_package_and_its_layout_loads_no_torch():
    code = (
        "import sys, inference.llama, inference.llama.layout\n"
        "from inference.llama import CheckpointError\n"
        "print(sorted(m for m in ('torch', 'sentencepiece') if m in sys.modules))\n"
        "from inference.llama import SamplingParams\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"  # nothing heavy until a name that needs it is used
    assert out[1] == "True"


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_a_checklist_line_of_any_known_digest_is_read_the_same_way(algorithm):
    digest = hashlib.new(algorithm, b"x").hexdigest()
    text = f"{digest.upper()}  consolidated.00.pth\n{digest} *./params.json\n\n"
    assert layout.checklist_parse(text) == {"consolidated.00.pth": digest, "params.json": digest}
    assert layout.digest_algorithm(digest) == algorithm


@pytest.mark.parametrize(
    "line", ["nonsense", "abc  params.json", "0" * 33 + "  params.json", "0" * 32 + "params.json"]
)
def test_a_line_that_is_not_a_checksum_is_refused_with_its_number(line):
    with pytest.raises(layout.CheckpointError, match="line 2"):
        layout.checklist_parse("0" * 32 + "  tokenizer.model\n" + line)


def test_the_engine_verifies_with_the_same_reading(tmp_path):
    (tmp_path / "params.json").write_text('{"dim": 8, "n_layers": 1, "n_heads": 1}')
    sha256 = hashlib.sha256((tmp_path / "params.json").read_bytes()).hexdigest()
    (tmp_path / "checklist.chk").write_text(layout.checklist_render([(sha256, "params.json")]))
    assert verify(tmp_path) == ["params.json"]
    (tmp_path / "checklist.chk").write_text(layout.checklist_render([("0" * 64, "params.json")]))
    with pytest.raises(layout.ChecksumError):
        verify(tmp_path)


def test_the_tokenizer_is_found_in_the_folder_or_beside_it(tmp_path):
    size = tmp_path / "7B"
    size.mkdir()
    assert layout.find_tokenizer(size) is None
    (tmp_path / "tokenizer.model").write_bytes(b"x")
    assert layout.find_tokenizer(size) == tmp_path / "tokenizer.model"
    (size / "tokenizer.model").write_bytes(b"y")
    assert layout.find_tokenizer(size) == size / "tokenizer.model"
