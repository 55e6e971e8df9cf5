from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_has_an_image_or_build_a_command_and_a_healthcheck():
    services = _compose()["services"]

    assert {"postgres", "redis", "s3", "web", "worker-cpu", "worker-gpu", "beat"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert service.get("command"), name
        assert service["healthcheck"]["test"], name


def test_named_volumes_are_declared_and_data_services_use_them():
    compose = _compose()
    declared = set(compose["volumes"])
    for name in ("postgres", "redis", "s3"):
        mounts = compose["services"][name]["volumes"]
        assert any(m.split(":")[0] in declared for m in mounts), name


def test_the_gpu_worker_reserves_a_device_and_serves_its_own_queues():
    services = _compose()["services"]
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    gpu_queues = gpu["command"][gpu["command"].index("-Q") + 1].split(",")
    cpu_queues = services["worker-cpu"]["command"][
        services["worker-cpu"]["command"].index("-Q") + 1
    ]
    assert all(q.startswith("gpu.") for q in gpu_queues)
    assert set(gpu_queues).isdisjoint(cpu_queues.split(","))


def test_web_runs_gunicorn_with_production_settings():
    web = _compose()["services"]["web"]
    assert "gunicorn portal.wsgi:application" in web["command"]
    # Its access log is redacted like every other log (query strings carry signatures).
    assert "--logger-class devtools.gunicorn_logging.RedactingLogger" in web["command"]
    assert web["environment"]["DJANGO_DEBUG"] == "0"
    assert web["depends_on"]["postgres"]["condition"] == "service_healthy"
