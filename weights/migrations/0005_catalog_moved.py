"""Point download links and events at the catalog's WeightFile and forget ModelVariant and
WeightFile in weights' state (state only: the tables stay, now owned by the catalog).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_catalog_moved"),
        ("catalog", "0001_initial"),
        ("inference", "0002_catalog_moved"),
        ("weights", "0004_variant_license"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.RemoveField(
                    model_name="weightfile",
                    name="variant",
                ),
                migrations.AlterField(
                    model_name="downloadevent",
                    name="file",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="download_events",
                        to="catalog.weightfile",
                    ),
                ),
                migrations.AlterField(
                    model_name="downloadlink",
                    name="file",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="links",
                        to="catalog.weightfile",
                    ),
                ),
                migrations.DeleteModel(
                    name="ModelVariant",
                ),
                migrations.DeleteModel(
                    name="WeightFile",
                ),
            ],
        ),
    ]
