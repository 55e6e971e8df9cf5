"""Run SeaweedFS as the portal's S3 store in a container, keys from the environment.

python -m devtools.s3_server     (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, PORTAL_S3_DATA)
"""

from __future__ import annotations

import os
from pathlib import Path

from devtools.services import SeaweedConfig, seaweed_command


def main() -> None:
    cfg = SeaweedConfig(
        data_dir=Path(os.environ.get("PORTAL_S3_DATA", "/data")),
        access_key=os.environ["S3_ACCESS_KEY_ID"],
        secret_key=os.environ["S3_SECRET_ACCESS_KEY"],
    )
    command = seaweed_command(cfg)
    # Listen on every interface inside the container so the other services can reach it.
    command = [arg.replace("-ip.bind=127.0.0.1", "-ip.bind=0.0.0.0") for arg in command]
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
