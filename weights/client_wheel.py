"""The Python client as a wheel built from this portal's own copy of it, so a researcher
outside the repository installs the same version with `pip install <portal>/client/...`.

A pure-Python wheel is a zip of the package with a small `.dist-info` folder (PEP 427,
PEP 376 RECORD); building it here needs nothing but the standard library, and pip installs
it without a build step.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings


@dataclass(frozen=True)
class Wheel:
    filename: str
    content: bytes


def _source() -> Path:
    return Path(settings.BASE_DIR) / "clients" / "python"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@functools.lru_cache(maxsize=1)
def client_wheel() -> Wheel:
    """The wheel, built once per process from clients/python (its pyproject names the
    version, the dependencies and the `portal-client` command)."""
    root = _source()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name, version = project["name"].replace("-", "_"), project["version"]
    dist_info = f"{name}-{version}.dist-info"
    files: list[tuple[str, bytes]] = [
        (f"portal_client/{path.name}", path.read_bytes())
        for path in sorted((root / "portal_client").glob("*.py"))
    ]
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {version}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3.9')}",
        *(f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])),
    ]
    scripts = project.get("scripts", {})
    files += [
        (f"{dist_info}/METADATA", ("\n".join(metadata) + "\n").encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: llama-research-portal\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (
            f"{dist_info}/entry_points.txt",
            ("[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())).encode(),
        ),
    ]
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files)
    record += f"{dist_info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files:
            wheel.writestr(path, data)
        wheel.writestr(f"{dist_info}/RECORD", record)
    return Wheel(filename=f"{name}-{version}-py3-none-any.whl", content=buffer.getvalue())
