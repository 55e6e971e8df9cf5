"""`manage.py seed_demo`: demo data for `make run`. Idempotent: running it again changes nothing.

Each capability adds its part here: demo accounts, the demo model published to S3.
`make run` seeds the accounts before the web server starts and the model (which takes
longer: it is built, then uploaded) in the background, so the site is up at once.
"""

from __future__ import annotations

import importlib

from django.core.management.base import BaseCommand

# name -> (module, function): each returns lines to print or (email, password) demo logins.
SEEDERS = {
    "accounts": ("accounts.demo", "seed_demo_accounts"),
    "weights": ("weights.demo", "seed_demo_weights"),
    # After the weights: the demo evaluations are scored on the published demo model.
    "evaluations": ("evaluations.demo", "seed_demo_evaluations"),
}


class Command(BaseCommand):
    help = "Create the demo accounts and publish the demo model (idempotent)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--only", choices=sorted(SEEDERS), action="append", help="seed only these parts"
        )

    def handle(self, *args, only: list[str] | None = None, **options) -> None:
        for name, (module_name, function_name) in SEEDERS.items():
            if only and name not in only:
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            for item in getattr(module, function_name)() or []:
                if isinstance(item, tuple):  # (email, password) of a demo login
                    item = f"demo login: {item[0]}  password: {item[1]}"
                self.stdout.write(f"  {item}")
