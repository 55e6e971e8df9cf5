"""Scoring through the portal, as evaluation harnesses use it: one Celery worker, the real
stack, lm-evaluation-harness 0.4.13 as the client.

    .venv/bin/python bench/scoring.py [--model demo|medium] [--threads 1] [--items 64]
                                      [--repeats 3]

Sets up its own world and removes it afterwards (as bench/jobs.py): a fresh PostgreSQL
database (`bench_portal_scoring`), a SeaweedFS S3 server on free ports, the checkpoint
published to S3 as the `demo` size, the portal's WSGI app on a local port and one worker
process (`-c 1`, JOBS_TORCH_THREADS=--threads). Redis is REDIS_URL's (default db 8; the
bench flushes it). The checkpoint (`--model`):

- `demo`: the demo checkpoint (1M parameters, vocab 1024);
- `medium`: random weights, dim 512, 8 layers, 8 heads, vocab 32000 with the original
  LLaMA tokenizer (testdata/), about 58M parameters: enough compute per token that the
  model, not the HTTP and queue overhead, dominates.

Prints:

1. lm-evaluation-harness log-likelihood requests per second: `--items` 4-choice items
   (contexts and continuations from the demo corpus), through the portal with
   `local-completions` (num_concurrent=8, batch_size=32, add_bos_token) against its `hf`
   backend on the same checkpoint exported with `export-hf` (float32, in this process,
   torch threads = --threads, batch sizes 1, lm-eval's default, and 32). Only the
   harness's `loglikelihood()` call is timed; median of --repeats. Also the largest
   difference between the two backends' log-likelihoods.
2. score-only latency: one request of 32 prompts with max_tokens 0 (echo, logprobs 1)
   through /v1/completions, against the engine called directly in this process
   (`Llama.generate` with max_new_tokens 0, same threads); medians of 5.

The machine is shared: medians are reported with their conditions. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import Portal, database, environment, start_worker  # noqa: E402

DB_NAME = "bench_portal_scoring"
MEDIUM = {"dim": 512, "n_layers": 8, "n_heads": 8, "multiple_of": 32, "norm_eps": 1e-5}


def _environment(tmp: Path, threads: int) -> dict[str, str]:
    return environment(
        db_name=DB_NAME,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"),
        JOBS_TOKENS_PER_DAY="100000000",
        JOBS_STEP_DELAY_SECONDS="0",
        JOBS_TORCH_THREADS=str(threads),
        JOBS_DTYPE="float32",
        JOBS_MODEL_CACHE_DIR=str(tmp / "models"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


def _checkpoint(kind: str, out: Path) -> Path:
    if kind == "demo":
        from inference.llama.demo import build_demo_checkpoint

        build_demo_checkpoint(out)
        return out
    from inference.llama.checkpoint import save_checkpoint
    from inference.llama.model import ModelArgs, Transformer, init_weights

    tokenizer = ROOT / "testdata" / "llama-tokenizer" / "tokenizer.model"
    params = {**MEDIUM, "vocab_size": 32000}
    model = init_weights(Transformer(ModelArgs.from_params(params, max_seq_len=256)), seed=0)
    save_checkpoint(out, model.state_dict(), params, tokenizer_model=tokenizer.read_bytes())
    return out


def _items(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """4-choice items from the demo corpus: a context of 8 to 30 words, the next word and
    three other words from the corpus."""
    words = (ROOT / "inference" / "llama" / "data" / "demo_corpus.txt").read_text().split()
    rnd = random.Random(seed)
    items = []
    for _ in range(n):
        length = rnd.randrange(8, 31)
        at = rnd.randrange(len(words) - length - 1)
        others = rnd.sample(words, 3)
        choices = [words[at + length], *others]
        items.append((" ".join(words[at : at + length]), [" " + c for c in choices]))
    return items


def _instances(items):
    from lm_eval.api.instance import Instance

    return [
        Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i)
        for ctx, conts in items
        for i, cont in enumerate(conts)
    ]


def _timed(lm, requests, repeats: int) -> tuple[float, list]:
    walls, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = lm.loglikelihood(requests, disable_tqdm=True)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["demo", "medium"], default="demo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    env = _environment(tmp, ns.threads)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    database(env["DATABASE_URL"], create=True)

    from devtools.services import SeaweedConfig, start_seaweed, stop_process

    s3_cfg = SeaweedConfig.on_free_ports(
        tmp / "s3", access_key="bench", secret_key=uuid.uuid4().hex
    )
    seaweed = start_seaweed(s3_cfg, log_path=tmp / "weed.log", timeout=90)
    os.environ.update(s3_cfg.env(bucket="bench"))
    worker = portal = None
    try:
        import django

        django.setup()
        import redis
        import requests
        import torch
        from django.core.management import call_command

        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
        call_command("migrate", verbosity=0)

        from accounts.services import token_create
        from accounts.tests.factories import UserFactory, grant_access
        from catalog.models import ModelVariant
        from core import storage
        from inference.llama import Llama, SamplingParams
        from inference.llama.export import export_hf
        from weights.services import variant_publish

        torch.set_num_threads(ns.threads)
        storage.ensure_bucket(wait=60)
        print(f"building the {ns.model} checkpoint ...", flush=True)
        checkpoint = _checkpoint(ns.model, tmp / "ckpt")
        hf_dir = export_hf(checkpoint, tmp / "hf", dtype="float32")
        variant = ModelVariant.objects.get(slug="demo")
        variant_publish(variant=variant, directory=checkpoint)
        user = UserFactory(email="bench@uni.example.edu")
        grant_access(user, "demo")
        token = token_create(user=user, name="bench", scopes=["generate"])[1]
        os.environ["OPENAI_API_KEY"] = token

        portal = Portal()
        worker = start_worker(env, tmp / "worker.log")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        # Warm-up: the worker loads the model on its first job.
        session.post(
            f"{portal.url}/v1/completions", json={"model": "demo", "prompt": "x", "max_tokens": 1}
        ).raise_for_status()

        # 1. lm-evaluation-harness log-likelihood requests per second
        from lm_eval.models.huggingface import HFLM
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        requests_ = _instances(_items(ns.items))
        via_portal = LocalCompletionsAPI(
            base_url=f"{portal.url}/v1/completions",
            model="demo",
            tokenizer=str(hf_dir),
            tokenizer_backend="huggingface",
            add_bos_token=True,
            num_concurrent=8,
            batch_size=32,
            max_length=variant.context_length,
        )
        portal_wall, portal_out = _timed(via_portal, requests_, ns.repeats)
        rates = {"portal (local-completions, 8 concurrent, batch 32)": len(requests_) / portal_wall}
        diffs = []
        for batch in (1, 32):
            hf = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=batch)
            wall, out = _timed(hf, requests_, ns.repeats)
            rates[f"hf backend, batch_size {batch}"] = len(requests_) / wall
            diffs.append(max(abs(a[0] - b[0]) for a, b in zip(out, portal_out, strict=True)))
            del hf
        n_params = Llama.load(checkpoint).model.args.n_params()
        print(
            f"\n1. lm-evaluation-harness loglikelihood, {len(requests_)} requests "
            f"({ns.items} items x 4 choices), {ns.model} model ({n_params / 1e6:.1f}M "
            f"parameters, float32), {ns.threads} torch thread(s) in the worker and for hf, "
            f"median of {ns.repeats}"
        )
        portal_rate = next(iter(rates.values()))
        for name, rate in rates.items():
            print(f"   {name:52s} {rate:8.1f} requests/s  ({portal_rate / rate:.2f}x)")
        print(f"   largest |loglikelihood difference| portal vs hf: {max(diffs):.2e}")

        # 2. score-only latency, one request of 32 prompts
        prompts = [ctx + conts[0] for ctx, conts in _items(32, seed=1)]
        body = {
            "model": "demo",
            "prompt": prompts,
            "max_tokens": 0,
            "echo": True,
            "logprobs": 1,
        }
        llama = Llama.load(checkpoint, dtype="float32", max_seq_len=variant.context_length)
        params = SamplingParams(max_new_tokens=0, echo=True, logprobs=True, top_logprobs=1)
        direct, through = [], []
        for _ in range(5):
            started = time.perf_counter()
            llama.generate(prompts, params)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            session.post(f"{portal.url}/v1/completions", json=body).raise_for_status()
            through.append(time.perf_counter() - started)
        d, p = statistics.median(direct), statistics.median(through)
        tokens = sum(len(llama.tokenizer.encode(t)) for t in prompts)
        print(
            f"\n2. score-only: one request of 32 prompts ({tokens} tokens), max_tokens 0, echo, "
            "logprobs 1; median of 5"
        )
        print(f"   engine called directly (Llama.generate): {d * 1000:8.1f} ms")
        print(f"   through the portal (/v1/completions):    {p * 1000:8.1f} ms  ({p / d:.2f}x)")
        return 0
    finally:
        if portal is not None:
            portal.stop()
        if worker is not None:
            stop_process(worker, grace=5)
        from django.db import connections

        connections.close_all()
        stop_process(seaweed, grace=1)
        database(env["DATABASE_URL"], create=False)


if __name__ == "__main__":
    sys.exit(main())
