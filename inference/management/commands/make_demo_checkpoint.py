"""`manage.py make_demo_checkpoint DIR [--shards N] [--seed S]`: the tiny demo checkpoint.

A thin wrapper: the work is `inference.llama.demo.build_demo_checkpoint`, which imports
torch, so it is imported inside `handle` and the web process never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Write a tiny LLaMA checkpoint in the original release layout (params.json, "
        "consolidated.NN.pth, tokenizer.model, checklist.chk), trained on text the project "
        "ships. Deterministic for a seed."
    )
    # Writes files only: no database, no system checks needed.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--shards", type=int, default=1, choices=[1, 2, 4, 8])
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--steps", type=int, default=None, help="training steps (default: the demo's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from inference.llama.demo import DEMO_STEPS, build_demo_checkpoint

        steps = options["steps"] if options["steps"] is not None else DEMO_STEPS
        if steps < 0:
            raise CommandError("--steps must be >= 0")
        verbosity = options.get("verbosity", 1)
        files = build_demo_checkpoint(
            options["directory"],
            shards=options["shards"],
            seed=options["seed"],
            steps=steps,
            log=self.stdout.write if verbosity > 1 else None,
        )
        if verbosity:
            self.stdout.write(
                self.style.SUCCESS(f"Wrote {len(files)} files to {options['directory']}")
            )
