"""Container health checks for docker-compose (no curl or celery CLI start-up cost).

python -m devtools.healthcheck http URL       any answer below 500 from URL
python -m devtools.healthcheck worker         this host's Celery worker answers a ping
python -m devtools.healthcheck beat           beat wrote its schedule file recently
python -m devtools.healthcheck s3 URL         the S3 gateway answers (403 unsigned is fine)
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request


def _http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own URL
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _worker() -> bool:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from portal.celery import app

    name = os.environ.get("CELERY_WORKER_NAME", f"worker@{socket.gethostname()}")
    return bool(app.control.ping(destination=[name], timeout=3))


def _beat() -> bool:
    path = os.path.join(os.environ.get("PORTAL_VAR_DIR", "var"), "celerybeat-schedule")
    candidates = [path, path + ".db", path + ".dat"]
    ages = [time.time() - os.path.getmtime(p) for p in candidates if os.path.exists(p)]
    return bool(ages) and min(ages) < 600


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else ""
    if kind in ("http", "s3") and len(argv) == 2:
        ok = _http(argv[1])
    elif kind == "worker":
        ok = _worker()
    elif kind == "beat":
        ok = _beat()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
