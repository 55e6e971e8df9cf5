"""lm-evaluation-harness, unchanged, against a live portal and a real worker: the
project's own tiny tasks (`testdata/eval/`) through `--model local-completions` give the
per-item log-likelihoods, greedy flags, generations and scores of the same tasks run by the
harness's `hf` backend on the demo checkpoint converted to transformers (`export-hf`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.models import GenerationJob

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parents[2]
TASKS = "portal_lighthouse_mc,portal_lighthouse_gen"


@pytest.fixture(scope="module")
def demo_hf(demo_checkpoint, tmp_path_factory) -> Path:
    from inference.llama.export import export_hf

    return export_hf(demo_checkpoint, tmp_path_factory.mktemp("demo-hf"), dtype="float32")


def lm_eval(out: Path, *args: str, api_key: str = "") -> dict[str, list[dict]]:
    """Run the harness's command line from the repository root (the tasks' data paths are
    relative to it); the logged samples of each task, by task."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OPENAI_API_KEY": api_key,
    }
    cmd = [
        sys.executable, "-m", "lm_eval", *args, "--tasks", TASKS,
        "--include_path", "testdata/eval", "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    samples: dict[str, list[dict]] = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    assert set(samples) == set(TASKS.split(",")), samples.keys()
    return samples


def test_lm_eval_through_the_portal_matches_its_hf_backend(
    jobs_worker, published_demo, live_server, generate_token, demo_hf, tmp_path
):
    local = lm_eval(
        tmp_path / "hf",
        "--model", "hf",
        "--model_args", f"pretrained={demo_hf},dtype=float32",
        "--device", "cpu",
    )  # fmt: skip
    portal = lm_eval(
        tmp_path / "portal",
        "--model", "local-completions",
        "--model_args",
        f"model=demo,base_url={live_server.url}/v1/completions,tokenizer={demo_hf},"
        "tokenizer_backend=huggingface,add_bos_token=True,num_concurrent=4,max_length=256",
        "--batch_size", "8",
        api_key=generate_token,
    )  # fmt: skip

    mc_local, mc_portal = local["portal_lighthouse_mc"], portal["portal_lighthouse_mc"]
    assert len(mc_local) == len(mc_portal) == 6
    for a, b in zip(mc_local, mc_portal, strict=True):
        assert a["doc_id"] == b["doc_id"]
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip(
            a["filtered_resps"], b["filtered_resps"], strict=True
        ):
            assert float(ll_b) != 0.0  # the bug this guards against: every choice scored 0
            assert float(ll_b) == pytest.approx(float(ll_a), abs=1e-4)
            assert greedy_a == greedy_b
        assert a["acc"] == b["acc"]

    gen_local, gen_portal = local["portal_lighthouse_gen"], portal["portal_lighthouse_gen"]
    assert len(gen_local) == len(gen_portal) == 4
    for a, b in zip(gen_local, gen_portal, strict=True):
        # the same greedy text (the portal keeps the continuation's leading space, as
        # OpenAI's API does; the hf backend decodes the new tokens alone)
        assert b["resps"][0][0].lstrip() == a["resps"][0][0].lstrip()
        assert a["filtered_resps"] == b["filtered_resps"]
        assert a["exact_match"] == b["exact_match"]

    jobs = GenerationJob.objects.all()
    assert jobs and all(job.state == "succeeded" for job in jobs)
    # the 24 choices went as a few batched scoring jobs, not one job each
    assert jobs.filter(params__max_new_tokens=1).count() < 24
