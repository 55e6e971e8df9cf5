"""A database made before the catalog app existed migrates to the new layout with every row
and every link between rows intact.

The test rolls the test database back to the last migrations of that layout (licenses in
`accounts`, sizes and files in `weights`), writes rows through the historical models, then
migrates forward and reads them through today's models.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

# The leaf migrations of every project app before the catalog app existed.
BEFORE_CATALOG = [
    ("accounts", "0003_license_and_reviewers"),
    ("weights", "0004_variant_license"),
    ("inference", "0001_initial"),
    ("review", "0003_queue_order_index"),
    ("catalog", None),  # not there yet
]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state([t for t in targets if t[1]]).apps


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.mark.django_db(transaction=True)
def test_a_database_from_before_the_catalog_keeps_its_rows_and_links():
    old = _migrate(BEFORE_CATALOG)
    License = old.get_model("accounts", "License")
    LicenseVersion = old.get_model("accounts", "LicenseVersion")
    ModelVariant = old.get_model("weights", "ModelVariant")
    WeightFile = old.get_model("weights", "WeightFile")
    DownloadLink = old.get_model("weights", "DownloadLink")
    User = old.get_model("accounts", "User")
    Application = old.get_model("accounts", "Application")
    SizeDecision = old.get_model("accounts", "SizeDecision")
    Grant = old.get_model("accounts", "Grant")
    LicenseAcceptance = old.get_model("accounts", "LicenseAcceptance")
    GenerationJob = old.get_model("inference", "GenerationJob")
    ContentType = old.get_model("contenttypes", "ContentType")

    now = timezone.now()
    old_type = ContentType.objects.get_or_create(app_label="weights", model="modelvariant")[0]
    lic = License.objects.create(slug="migration-test", title="Migration test license")
    version = LicenseVersion.objects.create(
        license=lic, version=1, title="v1", text="text", sha256="0" * 64, effective_at=now
    )
    variant = ModelVariant.objects.create(
        slug="mt", size="MT", params={"dim": 8}, shard_count=1, license=lic, position=99
    )
    wfile = WeightFile.objects.create(
        variant=variant,
        path="consolidated.00.pth",
        size=123,
        sha256="a" * 64,
        md5="b" * 32,
        s3_key="weights/mt/consolidated.00.pth",
        uploaded_at=now,
    )
    user = User.objects.create(email="migrated@example.org", password="!")
    application = Application.objects.create(user=user, state="approved", use_case="study")
    application.requested_variants.add(variant)
    SizeDecision.objects.create(application=application, variant=variant, outcome="approved")
    grant = Grant.objects.create(
        user=user,
        variant=variant,
        application=application,
        status="active",
        ends_at=now + timedelta(days=30),
    )
    LicenseAcceptance.objects.create(
        user=user, version=version, text_sha256="0" * 64, typed_name="M"
    )
    link = DownloadLink.objects.create(
        id="x" * 43, user=user, file=wfile, expires_at=now + timedelta(hours=1), max_uses=3
    )
    job = GenerationJob.objects.create(owner=user, variant=variant, prompts=["hi"], params={})

    _migrate(_latest())

    from django.contrib.contenttypes.models import ContentType as NewContentType

    from accounts.models import Application as NewApplication
    from accounts.models import Grant as NewGrant
    from accounts.models import LicenseAcceptance as NewAcceptance
    from catalog.models import License as NewLicense
    from catalog.models import ModelVariant as NewVariant
    from catalog.models import WeightFile as NewWeightFile
    from inference.models import GenerationJob as NewJob
    from weights.models import DownloadLink as NewLink

    new_variant = NewVariant.objects.get(pk=variant.pk)
    assert new_variant.slug == "mt"
    assert new_variant.license == NewLicense.objects.get(slug="migration-test")
    assert new_variant.license.versions.get().pk == version.pk
    assert list(new_variant.files.values_list("pk", flat=True)) == [wfile.pk]
    assert NewWeightFile.objects.get(pk=wfile.pk).s3_key == "weights/mt/consolidated.00.pth"
    assert NewLink.objects.get(pk=link.pk).file_id == wfile.pk
    assert list(NewApplication.objects.get(pk=application.pk).requested_variants.all()) == [
        new_variant
    ]
    assert NewApplication.objects.get(pk=application.pk).decisions.get().variant == new_variant
    assert NewGrant.objects.get(pk=grant.pk).variant == new_variant
    assert NewAcceptance.objects.get(user_id=user.pk).version.license.slug == "migration-test"
    assert NewJob.objects.get(pk=job.pk).variant == new_variant
    # The content type (and so permissions and admin history) followed the model.
    moved_type = NewContentType.objects.get(pk=old_type.pk)
    assert (moved_type.app_label, moved_type.model) == ("catalog", "modelvariant")
    assert NewContentType.objects.get_for_model(NewVariant).pk == old_type.pk
