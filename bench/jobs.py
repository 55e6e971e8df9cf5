"""Generation jobs end to end: one Celery worker, the demo model, the real stack.

    .venv/bin/python bench/jobs.py [--rounds 15] [--new-tokens 200] [--repeats 5]
                                   [--temperature 0.8] [--checkpoint DIR]

Sets up its own world and removes it afterwards: a fresh PostgreSQL database
(`bench_portal_jobs`, on DATABASE_URL's server), a SeaweedFS S3 server on free ports, the
demo checkpoint (built, then published to S3 with `variant_publish`), the portal's WSGI app
on a local port, and one worker process (`-c 1`) serving `gpu.demo`. Redis is REDIS_URL's
(default: db 7 of the machine's Redis; the bench flushes that db). Prints:

1. submit -> start: POST /api/v1/jobs until the worker has claimed the job (its
   `queue_wait`), median over `--rounds` jobs sent one after another to an idle worker;
   and the whole round trip of a one-token job (POST to the stream's `end` event).
2. overhead: the same greedy generation of `--new-tokens` tokens timed through the portal
   (POST to `end` event) and by calling the engine directly in this process
   (`Llama.generate`); medians, and their difference.
3. batching: 8 jobs one after another vs 8 submitted at once (POST, then the bench waits
   for each job's `end` on its Redis stream directly, so that its own readers take little
   CPU from the worker); generated tokens over wall time for each and their ratio, the
   median of `--repeats` rounds (target: at least 3x).

The machine is shared: medians are reported, and every figure is printed with how it was
measured. Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import Portal, database, environment, start_worker  # noqa: E402

DB_NAME = "bench_portal_jobs"
PROMPT = "The model"
WORDS = ["was", "of", "and", "in", "the", "is", "a", "to"]  # eight different prompts


def _environment(tmp: Path) -> dict[str, str]:
    return environment(
        db_name=DB_NAME,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7"),
        JOBS_MAX_ACTIVE_PER_USER="16",
        JOBS_TOKENS_PER_DAY="100000000",
        JOBS_MAX_BATCH_SIZE="8",
        JOBS_STEP_DELAY_SECONDS="0",
        # Two cores run the worker, the web, PostgreSQL and this script: one torch thread in
        # the worker (and in this script's direct engine calls) avoids oversubscription.
        JOBS_TORCH_THREADS="1",
        JOBS_MODEL_CACHE_DIR=str(tmp / "models"),
    )


class Api:
    def __init__(self, url: str, token: str) -> None:
        import requests

        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, **body) -> dict:
        response = self.session.post(f"{self.url}/api/v1/jobs", json={"model": "demo", **body})
        response.raise_for_status()
        return response.json()

    def wait_end(self, job_id: str) -> dict:
        """Read the job's SSE stream until its `end` event; returns the job."""
        import requests

        with requests.get(
            f"{self.url}/api/v1/jobs/{job_id}/stream",
            headers={**self.session.headers, "Accept": "text/event-stream"},
            stream=True,
            timeout=300,
        ) as response:
            event = None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "end":
                    return json.loads(line[6:])
        raise RuntimeError("stream ended without an end event")

    def run_quietly(self, **body) -> dict:
        """Submit, then wait for the job's `end` on its Redis stream directly (no SSE
        through the web), so that the bench's own readers take little CPU from the worker."""
        from inference.events import events_read
        from inference.models import GenerationJob

        job_id = self.submit(**body)["id"]
        last = "0"
        while True:
            for entry_id, event, _ in events_read(job_id, after=last, block_ms=1000):
                last = entry_id or last
                if event == "end":
                    return GenerationJob.objects.filter(pk=job_id).values(
                        "state",
                        "completion_tokens",
                        "created_at",
                        "started_at",
                        "finished_at",
                        "worker",
                    )[0]

    def run(self, **body) -> tuple[dict, float]:
        started = time.perf_counter()
        job = self.submit(**body)
        final = self.wait_end(job["id"])
        return final, time.perf_counter() - started


def _seconds_between(start: str, end: str) -> float:
    from django.utils.dateparse import parse_datetime

    return (parse_datetime(end) - parse_datetime(start)).total_seconds()


def _max_overlap(jobs: list[dict]) -> int:
    edges = []
    for job in jobs:
        edges.append((job["started_at"], 1))
        edges.append((job["finished_at"], -1))
    running = most = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        most = max(most, running)
    return most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="of the 8 jobs in part 3 (0: greedy)"
    )
    parser.add_argument("--checkpoint", type=Path, help="an existing demo checkpoint folder")
    ns = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    env = _environment(tmp)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    database(env["DATABASE_URL"], create=True)

    from devtools.services import SeaweedConfig, start_seaweed, stop_process

    s3_cfg = SeaweedConfig.on_free_ports(
        tmp / "s3", access_key="bench", secret_key=uuid.uuid4().hex
    )
    seaweed = start_seaweed(s3_cfg, log_path=tmp / "weed.log", timeout=90)
    os.environ.update(s3_cfg.env(bucket="bench"))
    worker = None
    portal = None
    try:
        import django

        django.setup()
        import redis
        from django.core.management import call_command

        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
        call_command("migrate", verbosity=0)

        from accounts.services import token_create
        from accounts.tests.factories import UserFactory, grant_access
        from catalog.models import ModelVariant
        from core import storage
        from weights.services import variant_publish

        storage.ensure_bucket(wait=60)
        checkpoint = ns.checkpoint
        if checkpoint is None:
            from inference.llama.demo import build_demo_checkpoint

            checkpoint = tmp / "demo"
            print("building the demo checkpoint ...", flush=True)
            build_demo_checkpoint(checkpoint)
        variant = ModelVariant.objects.get(slug="demo")
        variant_publish(variant=variant, directory=checkpoint)
        user = UserFactory(email="bench@uni.example.edu")
        grant_access(user, "demo")
        token = token_create(user=user, name="bench", scopes=["generate"])[1]

        portal = Portal()
        worker = start_worker(env, tmp / "worker.log")
        api = Api(portal.url, token)
        # Warm-up: the worker loads the model on its first job.
        api.run(prompt=PROMPT, max_new_tokens=4, temperature=0)

        # 1. submit -> start with an idle worker
        waits, trips = [], []
        for _ in range(ns.rounds):
            final, wall = api.run(prompt=PROMPT, max_new_tokens=1, temperature=0)
            waits.append(final["queue_wait"])
            trips.append(wall)
            time.sleep(0.2)  # idle again
        print(f"\n1. submit -> start, idle worker, {ns.rounds} one-token jobs one at a time")
        print(f"   median queue wait (POST to claimed): {statistics.median(waits) * 1000:7.1f} ms")
        print(
            f"   median round trip (POST to end event): {statistics.median(trips) * 1000:5.1f} ms"
        )

        # 2. overhead of portal + queue over the engine, same greedy generation
        import torch

        from inference.llama import Llama, SamplingParams

        torch.set_num_threads(1)
        llama = Llama.load(checkpoint, max_seq_len=variant.context_length)
        params = SamplingParams(max_new_tokens=ns.new_tokens, temperature=0.0)

        def as_the_worker_does():
            # The worker's decoder: JOBS_MAX_BATCH_SIZE rows, a cache of the whole context.
            decoder = llama.decoder(max_batch_size=8, max_seq_len=variant.context_length)
            decoder.add(PROMPT, params)
            return decoder.run()

        direct, worker_like, via_portal, in_worker, tokens = [], [], [], [], None
        for _ in range(5):
            started = time.perf_counter()
            [completion] = llama.generate([PROMPT], params)
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            as_the_worker_does()
            worker_like.append(time.perf_counter() - started)
            final, wall = api.run(prompt=PROMPT, max_new_tokens=ns.new_tokens, temperature=0)
            via_portal.append(wall)
            in_worker.append(_seconds_between(final["started_at"], final["finished_at"]))
            assert final["outputs"][0]["token_ids"] == completion.tokens, "not the same work"
            tokens = len(completion.tokens)
        d, w, p = (statistics.median(x) for x in (direct, worker_like, via_portal))
        print(f"\n2. the same greedy generation ({tokens} tokens), median of 5")
        print(f"   engine, Llama.generate:                 {d * 1000:7.1f} ms")
        print(f"   engine, BatchDecoder sized as a worker: {w * 1000:7.1f} ms")
        print(f"   through the portal and the queue:       {p * 1000:7.1f} ms")
        print(
            "   of which in the worker (claim to result): "
            f"{statistics.median(in_worker) * 1000:5.1f} ms"
        )
        print(f"   overhead over Llama.generate:           {(p - d) * 1000:7.1f} ms ({p / d:.2f}x)")
        print(f"   overhead over the worker-sized decoder: {(p - w) * 1000:7.1f} ms")
        print(
            "   portal + queue outside the worker:       "
            f"{(p - statistics.median(in_worker)) * 1000:7.1f} ms"
        )

        # 3. aggregate tokens/s: 8 jobs one at a time vs 8 at once
        bodies = [
            {
                "prompt": f"{PROMPT} {WORDS[i]}",
                "max_new_tokens": ns.new_tokens,
                "temperature": ns.temperature,
                "seed": i,
            }
            for i in range(8)
        ]
        serial_rates, together_rates, overlaps = [], [], []
        for _ in range(ns.repeats):
            started = time.perf_counter()
            serial = [api.run_quietly(**body) for body in bodies]
            serial_wall = time.perf_counter() - started
            serial_tokens = sum(j["completion_tokens"] for j in serial)
            time.sleep(0.3)
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(lambda b: api.run_quietly(**b), bodies))
            together_wall = time.perf_counter() - started
            together_tokens = sum(j["completion_tokens"] for j in together)
            serial_rates.append(serial_tokens / serial_wall)
            together_rates.append(together_tokens / together_wall)
            overlaps.append(_max_overlap(together))
            time.sleep(0.3)
        ratios = [t / s for t, s in zip(together_rates, serial_rates, strict=True)]
        rate_1 = statistics.median(serial_rates)
        rate_8 = statistics.median(together_rates)
        workers = {(j["worker"]) for j in together}
        print(
            f"\n3. 8 jobs of up to {ns.new_tokens} tokens, temperature {ns.temperature} "
            f"(seeded, the same 8 in both), {ns.repeats} rounds, medians"
        )
        print(f"   one at a time: {rate_1:7.1f} tok/s  ({serial_tokens} tokens per round)")
        print(f"   8 at once:     {rate_8:7.1f} tok/s  (worker(s): {len(workers)})")
        print(
            f"   ratio: {statistics.median(ratios):.2f}x (target >= 3x); per round: "
            + ", ".join(f"{r:.2f}x" for r in ratios)
        )
        print(f"   most jobs running at once: {min(overlaps)}-{max(overlaps)} of 8")
        arrival = max(j["created_at"] for j in together) - min(j["created_at"] for j in together)
        span = max(j["finished_at"] for j in together) - min(j["started_at"] for j in together)
        print(
            f"   last round: submissions spread over {arrival.total_seconds() * 1000:.0f} ms; "
            f"the worker ran the 8 within {span.total_seconds() * 1000:.0f} ms "
            f"(wall {together_wall * 1000:.0f} ms)"
        )
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
