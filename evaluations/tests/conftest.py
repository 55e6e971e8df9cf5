"""Fixtures of the evaluations tests: the jobs tests' demo checkpoint (published to the test
S3 server), the project's demo tasks, and a stand-in worker that finishes scoring
jobs through the jobs service with made-up log-probabilities (a pure function of the token
ids, so a job run twice gives the same numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

# The jobs tests' session-wide worker is not imported: a second copy of it would live on
# through the jobs tests and take their jobs. The end-to-end test starts its own.
from inference.tests.conftest import demo_checkpoint, published_demo  # noqa: F401 (fixtures)

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def mc_file() -> bytes:
    return (DATA / "demo_stories_mc.jsonl").read_bytes()


@pytest.fixture
def pairs_file() -> bytes:
    return (DATA / "demo_pairs_bias.jsonl").read_bytes()


def fake_logprobs(ids: list[int]) -> list[float | None]:
    return [None] + [-(((t * 31 + i) % 17) + 1) / 4 for i, t in enumerate(ids[1:], start=1)]


def fake_run(job, *, finish: bool = True) -> bool:
    """Claim `job` as a worker would and, with `finish`, end it with made-up scores."""
    from inference.models import JobState
    from inference.services import WorkerIdentity, job_claim, job_finish

    claimed = job_claim(job_id=job.pk, worker=WorkerIdentity(node="fake@test", host="t", pid=1))
    if claimed is None:
        return False
    if not finish:
        return True
    outputs = [
        {
            "index": i,
            "prompt_index": i,
            "prompt_token_ids": ids,
            "prompt_logprobs": fake_logprobs(ids),
        }
        for i, ids in enumerate(claimed.prompts)
    ]
    return job_finish(job=claimed, state=JobState.SUCCEEDED, outputs=outputs, worker="fake@test")
