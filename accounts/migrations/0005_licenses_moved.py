"""Forget License and LicenseVersion in accounts' state: they live in the catalog now (the
tables stay).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_catalog_moved"),
        ("weights", "0005_catalog_moved"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(
                    name="License",
                ),
                migrations.DeleteModel(
                    name="LicenseVersion",
                ),
            ],
        ),
    ]
