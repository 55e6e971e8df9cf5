"""Point accounts' foreign keys at the catalog's models (state only: the columns and
constraints already reference the same tables).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_license_and_reviewers"),
        ("catalog", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.RemoveField(
                    model_name="licenseversion",
                    name="license",
                ),
                migrations.AlterField(
                    model_name="licenseacceptance",
                    name="version",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="acceptances",
                        to="catalog.licenseversion",
                    ),
                ),
                migrations.AlterField(
                    model_name="application",
                    name="requested_variants",
                    field=models.ManyToManyField(
                        blank=True, related_name="+", to="catalog.modelvariant"
                    ),
                ),
                migrations.AlterField(
                    model_name="applicationevent",
                    name="variant",
                    field=models.ForeignKey(
                        blank=True,
                        help_text="Set when the event is a decision on one size",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="catalog.modelvariant",
                    ),
                ),
                migrations.AlterField(
                    model_name="grant",
                    name="variant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="grants",
                        to="catalog.modelvariant",
                    ),
                ),
                migrations.AlterField(
                    model_name="sizedecision",
                    name="variant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="catalog.modelvariant",
                    ),
                ),
            ],
        ),
    ]
