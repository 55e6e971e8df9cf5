"""Weight distribution figures on loopback against a private SeaweedFS (prints, asserts nothing).

    .venv/bin/python bench/downloads.py [--shard-gib 1.5] [--workers 4] [--keep]

1. `publish_weights` peak memory: a 13B-layout checkpoint (2 shards of --shard-gib GiB,
   random bytes) is published by a `manage.py publish_weights` subprocess; its peak RSS is
   read from wait4()'s rusage (target < 300 MB).
2. Throughput: the Python client's transfer engine (parallel ranged GETs, SHA-256 while
   streaming) against one `curl` stream of the same presigned URL, alternated, same run
   (target ratio >= 0.9).
3. Resume: the client is SIGKILLed at about 40 % of the file and run again; bytes received
   by both runs minus the file size is what was downloaded twice (target < 1 %).

Needs about 4 x shard size of free disk under the temp dir; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _curl(url: str, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(dest), url], check=True)
    return time.perf_counter() - started


def _client(url: str, dest: Path, size: int, sha: str, workers: int) -> float:
    run = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, url, str(dest), str(size), sha, str(workers)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return float(run.stdout.split()[-2])


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
    parser.add_argument("--workers", type=int, default=4)
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
    results: dict = {"shard_bytes": shard, "workers": args.workers}
    try:
        env = _env(cfg, work)
        os.environ.update({k: v for k, v in env.items() if k != "PATH"})
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env,
                       check=True)  # fmt: skip
        import django

        django.setup()
        from weights import storage
        from weights.models import ModelVariant, WeightFile

        deadline = time.monotonic() + 60
        while True:
            try:
                storage.ensure_bucket()
                break
            except storage.S3Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

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
        curl_times, client_times = [], []
        for _ in range(args.rounds):
            curl_times.append(_curl(url, work / "curl.bin"))
            (work / "curl.bin").unlink()
            client_times.append(
                _client(url, work / "client.bin", file.size, file.sha256, args.workers)
            )
            (work / "client.bin").unlink()
        curl_best, client_best = min(curl_times), min(client_times)
        results["throughput"] = {
            "curl_mb_per_s": [round(file.size / MiB / t) for t in curl_times],
            "client_mb_per_s": [round(file.size / MiB / t) for t in client_times],
            "ratio_best": (file.size / client_best) / (file.size / curl_best),
            "ratio_median": sorted(curl_times)[len(curl_times) // 2]
            / sorted(client_times)[len(client_times) // 2],
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
        f"throughput MB/s: curl {tp['curl_mb_per_s']}, client {tp['client_mb_per_s']}; "
        f"client/curl ratio best {tp['ratio_best']:.2f}, median {tp['ratio_median']:.2f} "
        "(target >= 0.9)"
    )
    print(
        f"kill at ~40% and resume: {resume['downloaded_twice'] / MiB:.2f} MiB downloaded twice "
        f"= {resume['downloaded_twice_pct']:.3f}% of the file (target < 1%)"
    )
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
