"""`manage.py publish_weights DIR --size 7B`: upload a checkpoint folder and record it.

Safe to interrupt (Ctrl-C, SIGTERM) and re-run: finished files are skipped, the file in
flight is aborted in S3 and left out of the manifest.
"""

from __future__ import annotations

import signal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.selectors import variant_get
from core.errors import PortalError
from weights.services import variant_publish


class Command(BaseCommand):
    help = "Upload a checkpoint in the original LLaMA layout to S3 and record its manifest."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--size", required=True, help="Catalog size: demo, 7B, 13B, ...")
        parser.add_argument(
            "--part-size-mb", type=int, default=None, help="S3 part size (memory ~ one part)"
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bars")

    def handle(self, *args, directory: Path, size: str, part_size_mb, no_progress, **options):
        bars: list[tqdm] = []

        def progress(path: str, total: int, action: str):
            for bar in bars:
                bar.close()
            bars.clear()
            verb = "checking" if action == "hash" else "uploading"
            bar = tqdm(
                total=total,
                desc=f"{verb} {path}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=no_progress,
                file=self.stderr._out,
            )
            bars.append(bar)
            return bar.update

        # SIGTERM ends the command like Ctrl-C: the upload in flight is aborted cleanly.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            variant = variant_get(size=size)
            result = variant_publish(
                variant=variant,
                directory=directory,
                progress=progress,
                part_size=part_size_mb * 1024 * 1024 if part_size_mb else None,
            )
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted. Files finished so far are recorded; run the same command again "
                "to upload the rest."
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            for bar in bars:
                bar.close()
        if result.aborted_uploads:
            self.stdout.write(f"aborted {result.aborted_uploads} unfinished upload(s)")
        self.stdout.write(
            self.style.SUCCESS(
                f"LLaMA {variant.size}: {len(result.uploaded)} uploaded, "
                f"{len(result.skipped)} already stored"
            )
        )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
