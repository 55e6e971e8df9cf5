"""Weight distribution figures on loopback against a private SeaweedFS (prints, asserts nothing).

    .venv/bin/python bench/downloads.py [--shard-gib 1.5] [--workers 4] [--keep]

1. `publish_weights` peak memory: a 13B-layout checkpoint (2 shards of --shard-gib GiB,
   random bytes) is published by a `manage.py publish_weights` subprocess; its peak RSS is
   read from wait4()'s rusage (target < 300 MB).
2. Throughput: the Python client's transfer engine (parallel ranged GETs, SHA-256 while
   streaming) against one `curl` stream of the same presigned URL, alternated, same run
   (target ratio >= 0.9). Runs vary a lot on a small VM: compare the medians, and try
   --shard-gib 1.0 and 2.0 too (the kernel's write-back starts mid-run from about 1.5).
3. Resume: the client is SIGKILLed at about 40 % of the file and run again; bytes received
   by both runs minus the file size is what was downloaded twice (target < 1 %).

Needs about 4 x shard size of free disk under the temp dir; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.services import SeaweedConfig, start_seaweed, stop_process  # noqa: E402

GiB = 1024**3
MiB = 1024**2

CLIENT_SCRIPT = r"""
import sys, time
from pathlib import Path
import requests
from portal_client.transfer import download_file
url, dest, sha = sys.argv[1], Path(sys.argv[2]), sys.argv[4]
size, workers = int(sys.argv[3]), int(sys.argv[5])
total = [0]
def on_receive(n):
    total[0] += n
    sys.stdout.write(f"received {total[0]}\n"); sys.stdout.flush()
started = time.perf_counter()
download_file(dest=dest, size=size, sha256=sha, fresh_url=lambda: url,
              session_factory=requests.Session, workers=workers, progress=False,
              on_receive=on_receive if "--report" in sys.argv else None)
print(f"done {time.perf_counter() - started:.6f} {total[0]}", flush=True)
"""


def _env(cfg: SeaweedConfig, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DJANGO_DEBUG": "1",
        "DJANGO_SECRET_KEY": "bench-only-" + "x" * 40,
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "PORTAL_VAR_DIR": str(work / "var"),
        "DJANGO_LOG_LEVEL": "WARNING",
        "S3_ENDPOINT_URL": cfg.endpoint,
        "S3_ACCESS_KEY_ID": cfg.access_key,
        "S3_SECRET_ACCESS_KEY": cfg.secret_key,
        "S3_BUCKET": "bench",
        "S3_READ_TIMEOUT": "120",
    }


def _write_random(path: Path, size: int) -> None:
    block = os.urandom(16 * MiB)
    with open(path, "wb") as out:
        written, n = 0, 0
        while written < size:
            # A counter in each block keeps blocks distinct without paying for urandom.
            chunk = n.to_bytes(8, "little") + block[8 : min(len(block), size - written)]
            out.write(chunk)
            written += len(chunk)
            n += 1


def _publish(env: dict, ckpt: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "publish_weights", str(ckpt), "--size", "13B",
         "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    output = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"publish_weights failed:\n{output}")
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "seconds": elapsed,
        "mb_per_s": size / MiB / elapsed,
        "output": output.strip().splitlines()[-1],
    }


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _curl(url: str, dest: Path, *, verify: bool = False) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one curl stream (then `sha256sum` if `verify`)."""
    cpu, started = _cpu_children(), time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(dest), url], check=True)
    if verify:
        subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True)
    return time.perf_counter() - started, _cpu_children() - cpu


def _client(url: str, dest: Path, size: int, sha: str, workers: int) -> tuple[float, float]:
    cpu = _cpu_children()
    run = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, url, str(dest), str(size), sha, str(workers)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    # Wall time measured inside the client (interpreter start-up excluded); CPU includes it.
    return float(run.stdout.split()[-2]), _cpu_children() - cpu


def _killed_then_resumed(url: str, dest: Path, size: int, sha: str, workers: int) -> dict:
    args = [sys.executable, "-c", CLIENT_SCRIPT, url, str(dest), str(size), sha, str(workers),
            "--report"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    first = 0
    for line in proc.stdout:
        if line.startswith("received "):
            first = int(line.split()[1])
            if first >= 0.4 * size:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    # Lines already in the pipe were received before the kill: count them too.
    for line in proc.stdout:
        if line.startswith("received "):
            first = int(line.split()[1])
    second = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    resumed = int(second.stdout.split()[-1])
    return {
        "received_before_kill": first,
        "received_after_resume": resumed,
        "downloaded_twice": first + resumed - size,
        "downloaded_twice_pct": 100 * (first + resumed - size) / size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shard-gib", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=None, help="default: the client's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--no-publish", action="store_true", help="skip the publish figure (one shard only)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-downloads-"))
    shard = int(args.shard_gib * GiB)
    free = shutil.disk_usage(work).free
    if free < 4.5 * shard:
        raise SystemExit(f"need {4.5 * shard / GiB:.1f} GiB free in {work}, have {free / GiB:.1f}")
    cfg = SeaweedConfig.on_free_ports(work / "seaweed", secret_key=os.urandom(8).hex())
    weed = start_seaweed(cfg, log_path=work / "weed.log", timeout=90)
    from portal_client.client import default_workers

    args.workers = args.workers or default_workers()
    results: dict = {"shard_bytes": shard, "workers": args.workers}
    try:
        env = _env(cfg, work)
        os.environ.update({k: v for k, v in env.items() if k != "PATH"})
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env,
                       check=True)  # fmt: skip
        import django

        django.setup()
        from catalog.models import ModelVariant, WeightFile
        from core import storage

        storage.ensure_bucket(wait=60)

        ckpt = work / "13B"
        ckpt.mkdir()
        variant = ModelVariant.objects.get(slug="13b")
        (ckpt / "params.json").write_text(json.dumps(variant.params))
        (ckpt / "tokenizer.model").write_bytes(os.urandom(500_000))
        if args.no_publish:
            from weights.checkpoints import LocalFile
            from weights.services import weightfile_upload

            _write_random(ckpt / "consolidated.00.pth", shard)
            source = ckpt / "consolidated.00.pth"
            local = LocalFile("consolidated.00.pth", source, shard, None)
            file = weightfile_upload(variant=variant, local=local)
        else:
            for rank in range(2):
                _write_random(ckpt / f"consolidated.{rank:02d}.pth", shard)
            results["publish"] = _publish(env, ckpt)
            file = WeightFile.objects.get(variant=variant, path="consolidated.00.pth")
        shutil.rmtree(ckpt)

        url = storage.presigned_get_url(file.s3_key, filename=file.filename, expires_in=3600)
        curl_runs, verified_runs, client_runs = [], [], []
        for _ in range(args.rounds):
            curl_runs.append(_curl(url, work / "curl.bin"))
            (work / "curl.bin").unlink()
            client_runs.append(_client(url, work / "client.bin", file.size, file.sha256,
                                       args.workers))  # fmt: skip
            (work / "client.bin").unlink()
            verified_runs.append(_curl(url, work / "curl.bin", verify=True))
            (work / "curl.bin").unlink()

        def rate(seconds: float) -> float:
            return file.size / MiB / seconds

        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        curl_t, client_t = [r[0] for r in curl_runs], [r[0] for r in client_runs]
        verified_t = [r[0] for r in verified_runs]
        results["throughput"] = {
            "curl_mb_per_s": [round(rate(t)) for t in curl_t],
            "client_mb_per_s": [round(rate(t)) for t in client_t],
            "curl_then_sha256sum_mb_per_s": [round(rate(t)) for t in verified_t],
            "ratio_best": min(curl_t) / min(client_t),
            "ratio_median": median(curl_t) / median(client_t),
            "ratio_vs_curl_then_sha256sum_median": median(verified_t) / median(client_t),
            "cpu_s_per_gib_curl": median([r[1] for r in curl_runs]) * GiB / file.size,
            "cpu_s_per_gib_client": median([r[1] for r in client_runs]) * GiB / file.size,
            "load_average": os.getloadavg(),
        }
        results["resume"] = _killed_then_resumed(
            url, work / "resume.bin", file.size, file.sha256, args.workers
        )
    finally:
        stop_process(weed, grace=1)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    tp, resume = results["throughput"], results["resume"]
    print(f"file: {shard / GiB:.2f} GiB, client workers: {args.workers}")
    if "publish" in results:
        publish = results["publish"]
        print(
            f"publish_weights (2 x {shard / GiB:.2f} GiB): peak RSS "
            f"{publish['peak_rss_mb']:.0f} MB (target < 300), {publish['mb_per_s']:.0f} MB/s"
        )
    print(
        f"throughput MB/s: curl {tp['curl_mb_per_s']}, client {tp['client_mb_per_s']}, "
        f"curl+sha256sum {tp['curl_then_sha256sum_mb_per_s']}"
    )
    print(
        f"client/curl ratio: best {tp['ratio_best']:.2f}, median {tp['ratio_median']:.2f} "
        "(target >= 0.9); against curl then sha256sum: "
        f"{tp['ratio_vs_curl_then_sha256sum_median']:.2f}"
    )
    print(
        f"CPU s/GiB: curl {tp['cpu_s_per_gib_curl']:.2f}, client {tp['cpu_s_per_gib_client']:.2f} "
        f"(SHA-256 included); load average {tp['load_average'][0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"kill at ~40% and resume: {resume['downloaded_twice'] / MiB:.2f} MiB downloaded twice "
        f"= {resume['downloaded_twice_pct']:.3f}% of the file (target < 1%)"
    )
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
