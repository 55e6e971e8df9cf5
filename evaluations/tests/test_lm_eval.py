"""The portal's multiple-choice evaluation against lm-evaluation-harness, unchanged: its `hf`
backend on the demo checkpoint converted to transformers (`export-hf`) scores the same task
file (`testdata/eval-tasks/portal_demo_stories_mc.yaml`) with the same accuracy, the same
length-normalised accuracy and the same log-likelihood of every choice as the portal's
evaluation of the demo size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluations.models import EvaluationState, ScoredBy
from evaluations.services import evaluation_start, task_upload

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TASK = "portal_demo_stories_mc"


def test_accuracy_equals_lm_eval_hf_backend(
    researcher, published_demo, demo_checkpoint, mc_file, tmp_path
):
    from evaluations.runner import score_in_process
    from inference.llama import Llama
    from inference.llama.export import export_hf

    hf = export_hf(demo_checkpoint, tmp_path / "demo-hf", dtype="float32")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={hf},dtype=float32", "--device", "cpu",
        "--tasks", TASK, "--include_path", "testdata/eval-tasks",
        "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (samples_file,) = (tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl")
    samples = sorted(
        (json.loads(line) for line in samples_file.read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    harness = json.loads(results_file.read_text())["results"][TASK]

    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = evaluation_start(
        user=researcher, task=task, variant=published_demo, scored_by=ScoredBy.IN_PROCESS
    )
    llama = Llama.load(demo_checkpoint, device="cpu", dtype="float32")
    evaluation = score_in_process(evaluation, llama=llama)
    assert evaluation.state == EvaluationState.SUCCEEDED

    items = {i.index: i.scores for i in evaluation.items.all()}
    assert len(samples) == len(items) == 20
    for sample in samples:
        ours = items[sample["doc_id"]]
        theirs = [float(ll) for ll, _greedy in sample["filtered_resps"]]
        assert ours["logprobs"] == pytest.approx(theirs, abs=1e-3)
        assert float(ours["correct"]) == sample["acc"]
        assert float(ours["correct_norm"]) == sample["acc_norm"]
    mine = evaluation.results
    print(
        f"\nportal acc {mine['acc']['value']:.3f} acc_norm {mine['acc_norm']['value']:.3f}; "
        f"lm-eval hf acc {harness['acc,none']:.3f} acc_norm {harness['acc_norm,none']:.3f}"
    )
    assert evaluation.results["acc"]["value"] == pytest.approx(harness["acc,none"])
    assert evaluation.results["acc_norm"]["value"] == pytest.approx(harness["acc_norm,none"])
