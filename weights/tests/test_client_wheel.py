"""The Python client installs from the portal itself, the same version as the portal's."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]["version"]


def test_pip_installs_the_wheel_the_portal_serves_and_it_runs(client, tmp_path):
    filename = f"portal_client-{VERSION}-py3-none-any.whl"
    response = client.get(f"/client/{filename}")
    assert response.status_code == 200
    wheel = tmp_path / filename
    wheel.write_bytes(response.content)
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        names = set(archive.namelist())
    assert "portal_client/transfer.py" in names
    assert f"portal_client-{VERSION}.dist-info/RECORD" in names

    target = tmp_path / "site"
    # --no-deps: requests and tqdm are this venv's already; nothing is fetched from PyPI.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (target / "bin" / "portal-client").is_file()  # the console script
    run = subprocess.run(
        [sys.executable, "-c", "import portal_client, sys; print(portal_client.__file__)"],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert run.stdout.strip().startswith(str(target))


def test_the_model_page_shows_the_install_command_to_downloaders(client, researcher, published_7b):
    client.force_login(researcher)
    html = client.get("/models/7b/").content.decode()
    assert (
        f'<code id="client-install">pip install http://testserver/client/'
        f"portal_client-{VERSION}-py3-none-any.whl</code>"
    ) in html
    assert client.get("/client/portal_client-0.0.0-py3-none-any.whl").status_code == 404
    # and how to use the weights with transformers
    assert "python -m inference.llama export-hf ./llama-7b ./llama-7b-hf" in html
