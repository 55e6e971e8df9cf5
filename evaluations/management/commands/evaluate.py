"""`manage.py evaluate --size demo --task FILE`: evaluate a JSONL task on a size from the
command line, printing progress and the result.

Where it is scored:
- a live worker serves the size (or `--worker`): as scoring jobs through the workers, the
  web's path exactly; the command advances the evaluation itself while it waits, so no beat
  is needed. This runs on the account of `--user`, which needs a grant for the size.
- otherwise (or `--in-process`): the size's published files are fetched (SHA-256 verified)
  and scored by the engine in this process, with the same token sequences and the same
  echoed log-probabilities; the evaluation says "scored by: in-process". This is the
  operator's own run: no grant is checked.

The task is stored as a task of the user (the same file again reuses it), and the
evaluation appears on the evaluations pages like any other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from catalog.selectors import variant_availability, variant_get
from core.errors import PortalError
from evaluations.formats import FIELDS
from evaluations.models import Evaluation, EvaluationState, EvaluationTask, ScoredBy
from evaluations.services import evaluation_advance, evaluation_start, task_upload


def _guess_kind(data: bytes) -> str:
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                keys = set(json.loads(line))
            except (ValueError, TypeError):
                break
            for kind, fields in FIELDS.items():
                if set(fields) <= keys:
                    return kind
            break
    raise CommandError("Cannot tell the task's kind from its first line; give --kind.")


class Command(BaseCommand):
    help = "Evaluate a JSONL task on a model size (scoring jobs on a worker, or in-process)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--size", required=True, help="demo, 7B ...")
        parser.add_argument("--task", required=True, help="the JSONL task file")
        parser.add_argument("--kind", choices=sorted(FIELDS), help="default: from line 1")
        parser.add_argument("--name", help="the task's name (default: the file's name)")
        parser.add_argument("--user", help="owner's email (default: the first superuser)")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--worker", action="store_true", help="wait for a worker")
        where.add_argument("--in-process", action="store_true", help="score here")
        parser.add_argument("--timeout", type=float, default=3600, help="seconds (worker)")

    def handle(self, *args, **o) -> None:
        path = Path(o["task"])
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        data = path.read_bytes()
        kind = o["kind"] or _guess_kind(data)
        users = get_user_model().objects
        user = (
            users.filter(email=o["user"]).first()
            if o["user"]
            else users.filter(is_superuser=True, is_active=True).order_by("pk").first()
        )
        if user is None:
            raise CommandError("No such user; give --user EMAIL of an existing account.")
        try:
            variant = variant_get(size=o["size"])
            name = o["name"] or path.stem
            task = EvaluationTask.objects.filter(owner=user, name=name, kind=kind).first()
            if task is None or task.content.encode("utf-8") != data:
                task = task_upload(user=user, name=name, kind=kind, data=data)
            runnable = variant_availability(variant).runnable
            on_worker = o["worker"] or (runnable and not o["in_process"])
            self.stdout.write(
                f"{task}: sha256 {task.sha256}\n"
                + (
                    f"scoring as jobs on the workers serving {variant}"
                    if on_worker
                    else f"scoring in this process with the engine ({variant} has no live "
                    "worker, or --in-process)"
                )
            )
            evaluation = evaluation_start(
                user=user,
                task=task,
                variant=variant,
                scored_by=ScoredBy.WORKER if on_worker else ScoredBy.IN_PROCESS,
                check_access=on_worker,
            )
            if on_worker:
                evaluation = self._wait(evaluation, o["timeout"])
            else:
                from evaluations.runner import score_in_process  # torch: here only

                evaluation = score_in_process(evaluation, on_progress=self._progress)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self._report(evaluation)
        if evaluation.state != EvaluationState.SUCCEEDED:
            raise CommandError(f"The evaluation ended {evaluation.state}: {evaluation.error}")

    def _progress(self, evaluation: Evaluation) -> None:
        self.stdout.write(
            f"  {evaluation.items_done}/{evaluation.items_total} items "
            f"({100 * evaluation.progress:.0f}%){'  ' + evaluation.note if evaluation.note else ''}"
        )

    def _wait(self, evaluation: Evaluation, timeout: float) -> Evaluation:
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            evaluation = evaluation_advance(evaluation_id=evaluation.pk)
            if evaluation.items_done != last:
                self._progress(evaluation)
                last = evaluation.items_done
            if evaluation.state != EvaluationState.RUNNING:
                return evaluation
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Not finished after {timeout:.0f} s; it runs on: "
                    f"{evaluation.get_absolute_url()}"
                )
            time.sleep(0.5)

    def _report(self, evaluation: Evaluation) -> None:
        r = evaluation.results
        self.stdout.write(f"evaluation {evaluation.pk}: {evaluation.state}")
        if "acc" in r:
            for key in ("acc", "acc_norm"):
                p = r[key]
                lo, hi = p["ci95"]
                self.stdout.write(
                    f"  {key}: {100 * p['value']:.1f}% ({p['k']}/{p['n']}; 95% Wilson "
                    f"{100 * lo:.1f}-{100 * hi:.1f}%)"
                )
        elif "pct_stereotype" in r:
            p = r["pct_stereotype"]
            self.stdout.write(f"  pct_stereotype: {100 * p['value']:.1f}% ({p['k']}/{p['n']})")
            for name, c in r["categories"].items():
                self.stdout.write(f"    {name}: {100 * c['value']:.1f}% ({c['k']}/{c['n']})")
        elif r.get("tokens"):
            self.stdout.write(
                f"  log-probability {r['logprob']:.3f} over {r['tokens']} tokens; "
                f"perplexity {r['perplexity']:.3f}"
            )
        self.stdout.write(f"  page: {evaluation.get_absolute_url()}")
