"""The catalog's models were defined in `accounts` (License, LicenseVersion) and `weights`
(ModelVariant, WeightFile). They move here in the migration state only: the tables keep
their names and rows (`db_table`), and the content types follow so that permissions and
admin history stay attached.
"""

import django.db.models.deletion
from django.db import migrations, models

MOVED = {"accounts": ["license", "licenseversion"], "weights": ["modelvariant", "weightfile"]}


def content_types_forwards(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for app_label, models_ in MOVED.items():
        for model in models_:
            moved = ContentType.objects.filter(app_label=app_label, model=model)
            if moved.exists():
                # A catalog type made by an earlier post_migrate holds only the default
                # permissions; the old one carries the granted permissions and admin history.
                ContentType.objects.filter(app_label="catalog", model=model).delete()
                moved.update(app_label="catalog")


def content_types_backwards(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for app_label, models_ in MOVED.items():
        ContentType.objects.filter(app_label="catalog", model__in=models_).update(
            app_label=app_label
        )


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0003_license_and_reviewers"),
        ("weights", "0004_variant_license"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="License",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("slug", models.SlugField(max_length=64, unique=True)),
                        ("title", models.CharField(max_length=200)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "db_table": "accounts_license",
                        "ordering": ["slug"],
                    },
                ),
                migrations.CreateModel(
                    name="ModelVariant",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("family", models.CharField(default="LLaMA", max_length=64)),
                        (
                            "slug",
                            models.SlugField(
                                help_text="URL and queue name: 7b, demo", max_length=32, unique=True
                            ),
                        ),
                        (
                            "size",
                            models.CharField(
                                help_text="As people say it: 7B, demo", max_length=16, unique=True
                            ),
                        ),
                        ("params", models.JSONField(help_text="The checkpoint's params.json")),
                        (
                            "shard_count",
                            models.PositiveSmallIntegerField(help_text="Model-parallel shards"),
                        ),
                        ("context_length", models.PositiveIntegerField(default=2048)),
                        ("model_card", models.TextField(blank=True)),
                        (
                            "access_policy",
                            models.CharField(
                                choices=[
                                    ("manual", "One reviewer decides"),
                                    ("two_reviewers", "Two different reviewers must approve"),
                                    ("automatic", "Approved on submission when no flag is raised"),
                                ],
                                default="manual",
                                max_length=16,
                            ),
                        ),
                        (
                            "grant_days",
                            models.PositiveIntegerField(
                                default=365, help_text="Default length of a grant"
                            ),
                        ),
                        ("is_published", models.BooleanField(default=False)),
                        ("position", models.PositiveSmallIntegerField(default=0)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "license",
                            models.ForeignKey(
                                blank=True,
                                help_text="The license that governs this size (empty: the portal's default license)",
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="variants",
                                to="catalog.license",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "weights_modelvariant",
                        "ordering": ["position", "slug"],
                    },
                ),
                migrations.CreateModel(
                    name="LicenseVersion",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("version", models.PositiveIntegerField()),
                        ("title", models.CharField(max_length=200)),
                        ("text", models.TextField()),
                        (
                            "sha256",
                            models.CharField(help_text="SHA-256 of the UTF-8 text", max_length=64),
                        ),
                        ("effective_at", models.DateTimeField()),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "license",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="versions",
                                to="catalog.license",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "accounts_licenseversion",
                        "ordering": ["license", "-version"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("license", "version"), name="license_version_unique"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="WeightFile",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        (
                            "path",
                            models.CharField(
                                help_text="Path inside the checkpoint directory", max_length=255
                            ),
                        ),
                        ("size", models.PositiveBigIntegerField()),
                        ("sha256", models.CharField(max_length=64)),
                        ("md5", models.CharField(max_length=32)),
                        ("s3_key", models.CharField(max_length=512, unique=True)),
                        ("uploaded_at", models.DateTimeField()),
                        (
                            "variant",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="files",
                                to="catalog.modelvariant",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "weights_weightfile",
                        "ordering": ["variant", "path"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("variant", "path"), name="weightfile_unique_path"
                            )
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_types_forwards, content_types_backwards),
    ]
