from __future__ import annotations

import hashlib
import json
import os

import pytest
from django.core.management import CommandError, call_command

from catalog.models import ModelVariant, WeightFile
from core import storage
from weights.services import s3_prefix, variant_publish
from weights.tests.checkpoints import write_checkpoint

MiB = 1024 * 1024
pytestmark = pytest.mark.django_db


@pytest.fixture
def v13b(db) -> ModelVariant:
    return ModelVariant.objects.get(slug="13b")


def _stored_bytes(s3, key: str) -> bytes:
    return storage.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def _clear(variant: ModelVariant) -> None:
    """The S3 server lives for the whole run: start each test with no stored objects."""
    for file in WeightFile.objects.filter(variant=variant):
        storage.object_delete(file.s3_key)
    WeightFile.objects.filter(variant=variant).delete()
    for path in ("params.json", "tokenizer.model", "consolidated.00.pth", "consolidated.01.pth"):
        storage.object_delete(s3_prefix(variant) + path)


def test_it_publishes_every_file_with_its_manifest(s3, tmp_path, v13b):
    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b)

    call_command("publish_weights", str(ckpt), "--size", "13B", "--no-progress")

    rows = {f.path: f for f in WeightFile.objects.filter(variant=v13b)}
    assert sorted(rows) == [
        "consolidated.00.pth", "consolidated.01.pth", "params.json", "tokenizer.model",
    ]  # fmt: skip
    for path, row in rows.items():
        data = (ckpt / path).read_bytes()
        assert row.size == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        assert _stored_bytes(s3, row.s3_key) == data


def test_an_interrupted_publish_resumes_without_reuploading_finished_files(
    s3, tmp_path, v13b, monkeypatch
):
    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b, shard_bytes=11 * MiB)
    real_upload = storage.upload_file
    uploads: list[str] = []

    def interrupted_upload(path, **kwargs):
        uploads.append(path.name)
        if path.name == "consolidated.01.pth":
            parts = []

            def interrupt_after_one_part(count):
                parts.append(count)
                if len(parts) == 1:
                    raise KeyboardInterrupt

            kwargs["on_progress"] = interrupt_after_one_part
        return real_upload(path, **kwargs)

    monkeypatch.setattr(storage, "upload_file", interrupted_upload)
    with pytest.raises(KeyboardInterrupt):
        variant_publish(variant=v13b, directory=ckpt, part_size=5 * MiB)

    assert uploads == ["consolidated.00.pth", "consolidated.01.pth"]
    assert list(WeightFile.objects.filter(variant=v13b).values_list("path", flat=True)) == [
        "consolidated.00.pth"
    ]
    assert storage.object_head(s3_prefix(v13b) + "consolidated.01.pth") is None
    assert storage.multipart_uploads_list(prefix=s3_prefix(v13b)) == []

    uploads.clear()

    def counted_upload(path, **kwargs):
        uploads.append(path.name)
        return real_upload(path, **kwargs)

    monkeypatch.setattr(storage, "upload_file", counted_upload)
    result = variant_publish(variant=v13b, directory=ckpt, part_size=5 * MiB)

    assert uploads == ["consolidated.01.pth", "params.json", "tokenizer.model"]
    assert result.skipped == ["consolidated.00.pth"]
    assert WeightFile.objects.filter(variant=v13b).count() == 4
    assert (
        _stored_bytes(s3, s3_prefix(v13b) + "consolidated.01.pth")
        == (ckpt / "consolidated.01.pth").read_bytes()
    )


def test_a_rerun_skips_everything_and_a_changed_file_is_uploaded_again(s3, tmp_path, v13b):
    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b, checklist=False)
    variant_publish(variant=v13b, directory=ckpt)

    again = variant_publish(variant=v13b, directory=ckpt)
    assert again.uploaded == []
    (ckpt / "tokenizer.model").write_bytes(os.urandom(1025))  # same size, other bytes
    changed = variant_publish(variant=v13b, directory=ckpt)

    assert changed.uploaded == ["tokenizer.model"]
    row = WeightFile.objects.get(variant=v13b, path="tokenizer.model")
    assert _stored_bytes(s3, row.s3_key) == (ckpt / "tokenizer.model").read_bytes()


def test_republishing_a_changed_file_keeps_its_download_history(s3, tmp_path, v13b):
    from accounts.tests.factories import UserFactory
    from weights.models import DownloadEvent

    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b, checklist=False)
    variant_publish(variant=v13b, directory=ckpt)
    row = WeightFile.objects.get(variant=v13b, path="tokenizer.model")
    DownloadEvent.objects.create(user=UserFactory(), file=row, ip="192.0.2.1")
    (ckpt / "tokenizer.model").write_bytes(os.urandom(2000))

    result = variant_publish(variant=v13b, directory=ckpt)

    assert result.uploaded == ["tokenizer.model"]
    row.refresh_from_db()
    assert row.size == 2000
    assert row.sha256 == hashlib.sha256((ckpt / "tokenizer.model").read_bytes()).hexdigest()
    assert row.download_events.count() == 1


def test_a_file_that_fails_checklist_chk_is_never_registered_or_stored(s3, tmp_path, v13b):
    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b)
    (ckpt / "consolidated.01.pth").write_bytes(os.urandom(64 * 1024))  # damaged after listing

    with pytest.raises(CommandError, match=r"consolidated\.01\.pth: MD5 .* checklist\.chk"):
        call_command("publish_weights", str(ckpt), "--size", "13B", "--no-progress")

    assert not WeightFile.objects.filter(variant=v13b, path="consolidated.01.pth").exists()
    assert storage.object_head(s3_prefix(v13b) + "consolidated.01.pth") is None
    assert storage.multipart_uploads_list(prefix=s3_prefix(v13b)) == []


def test_a_sha256_checklist_is_checked_like_the_release_md5_one(s3, tmp_path, v13b):
    import hashlib

    from inference.llama.layout import checklist_render

    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b)
    names = ["params.json", "consolidated.00.pth", "consolidated.01.pth"]
    rows = [(hashlib.sha256((ckpt / n).read_bytes()).hexdigest(), n) for n in names]
    (ckpt / "checklist.chk").write_text(checklist_render(rows))
    call_command("publish_weights", str(ckpt), "--size", "13B", "--no-progress")
    assert WeightFile.objects.filter(variant=v13b).count() == 4

    _clear(v13b)
    (ckpt / "consolidated.01.pth").write_bytes(os.urandom(64 * 1024))  # damaged after listing
    with pytest.raises(CommandError, match=r"consolidated\.01\.pth: SHA-256 .* checklist\.chk"):
        call_command("publish_weights", str(ckpt), "--size", "13B", "--no-progress")
    assert not WeightFile.objects.filter(variant=v13b, path="consolidated.01.pth").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "consolidated.01.pth").unlink(), r"2 model-parallel shard\(s\)"),
        (lambda d: (d / "consolidated.02.pth").write_bytes(b"x"), r"found: .*consolidated\.02"),
        (lambda d: (d / "params.json").unlink(), "has no params.json"),
        (lambda d: (d / "params.json").write_text("{"), "not valid JSON"),
        (
            lambda d: (d / "params.json").write_text(
                json.dumps({"dim": 4096, "n_heads": 32, "n_layers": 32})
            ),
            "dim=4096 but LLaMA 13B has dim=5120",
        ),
        (lambda d: (d / "tokenizer.model").unlink(), "No tokenizer.model"),
        (lambda d: (d / "checklist.chk").write_text("nonsense\n"), "checklist.chk line 1"),
        (
            lambda d: (d / "checklist.chk").write_text("0" * 40 + "  params.json\n"),
            "SHA1 digest for params.json",
        ),
    ],
)
def test_it_refuses_a_folder_that_is_not_the_release_layout(tmp_path, v13b, damage, message):
    ckpt = write_checkpoint(tmp_path / "13B", v13b)
    damage(ckpt)

    with pytest.raises(CommandError, match=message):
        call_command("publish_weights", str(ckpt), "--size", "13B", "--no-progress")

    assert not WeightFile.objects.filter(variant=v13b).exists()


def test_it_names_the_known_sizes_for_an_unknown_one(tmp_path, db):
    with pytest.raises(CommandError, match=r"No model size '14B'\. Known sizes: demo, 7B"):
        call_command("publish_weights", str(tmp_path), "--size", "14B", "--no-progress")


def test_it_accepts_the_tokenizer_one_level_up_as_in_the_original_release(s3, tmp_path, v13b):
    _clear(v13b)
    ckpt = write_checkpoint(tmp_path / "13B", v13b, checklist=False)
    (ckpt / "tokenizer.model").rename(tmp_path / "tokenizer.model")

    result = variant_publish(variant=v13b, directory=ckpt)

    assert "tokenizer.model" in result.uploaded


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_ctrl_c_on_the_command_aborts_the_file_in_flight_and_a_rerun_resumes(s3, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from django.conf import settings
    from django.db import connection

    variant = ModelVariant.objects.get(slug="13b")
    _clear(variant)
    ckpt = write_checkpoint(tmp_path / "13B", variant, shard_bytes=40 * MiB)
    db = connection.settings_dict
    env = {
        **os.environ,
        **s3.env(),
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:"
        f"{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "publish_weights", str(ckpt), "--size", "13B",
         "--part-size-mb", "5", "--no-progress"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not WeightFile.objects.filter(variant=variant, path="consolidated.00.pth").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 1
    assert "Interrupted. Files finished so far are recorded" in stderr
    assert storage.multipart_uploads_list(prefix=s3_prefix(variant)) == []
    for row in WeightFile.objects.filter(variant=variant):  # only whole, verified files
        assert row.sha256 == hashlib.sha256((ckpt / row.path).read_bytes()).hexdigest()
        assert storage.object_exists(row.s3_key, size=row.size)

    result = variant_publish(variant=variant, directory=ckpt)

    assert "consolidated.00.pth" in result.skipped
    assert WeightFile.objects.filter(variant=variant).count() == 4


def test_it_says_so_when_s3_cannot_be_reached(tmp_path, v13b):
    from django.test import override_settings

    from devtools.services import free_port

    ckpt = write_checkpoint(tmp_path / "13B", v13b)
    with override_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"):
        storage.reset_client()
        try:
            with pytest.raises(CommandError, match="The file store is unreachable"):
                call_command("publish_weights", str(ckpt), "--size", "13B", "--no-progress")
        finally:
            storage.reset_client()

    assert not WeightFile.objects.filter(variant=v13b).exists()
