"""Model cards as documents: checking a version's content, its hash, rendering its Markdown
safely, placing its tables, and writing a table as CSV or JSON.

Markdown goes through markdown-it-py with raw HTML off (tags in the text come out escaped),
images off (a card must not make readers' browsers fetch from elsewhere) and markdown-it's
link check (no `javascript:`, `vbscript:`, `file:` or `data:` links).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from functools import cache

from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

from catalog.models import CARD_CHARTS
from core.errors import InvalidInput
from core.exports import csv_cell

TABLE_LINE = re.compile(r"^\[table:\s*([a-z0-9_-]+)\s*\]\s*$", re.MULTILINE)
KEY = re.compile(r"^[a-z0-9_-]{1,40}$")
MAX_ROWS, MAX_COLUMNS = 200, 30


@cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")


def markdown_render(text: str) -> SafeString:
    """HTML for Markdown `text`; any HTML in it is escaped, never passed through."""
    return mark_safe(_markdown().render(text))  # noqa: S308 (html off: markdown-it escapes)


# --- Content -------------------------------------------------------------------------------


def card_content_sha256(*, summary: str, metadata: list, body: str, tables: list) -> str:
    canonical = json.dumps(
        {"summary": summary, "metadata": metadata, "body": body, "tables": tables},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _cell_ok(value) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def tables_problems(tables) -> list[str]:
    """What is wrong with a card's tables, one message per problem (empty: they are fine)."""
    if not isinstance(tables, list):
        return ["The tables must be a JSON list of tables."]
    problems: list[str] = []
    seen: set[str] = set()
    for n, table in enumerate(tables, start=1):
        where = f"Table {n}"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be an object.")
            continue
        key = table.get("key")
        if not isinstance(key, str) or not KEY.match(key):
            problems.append(f"{where}: `key` must be 1-40 of a-z, 0-9, - and _.")
        elif key in seen:
            problems.append(f"{where}: the key {key!r} is used twice.")
        else:
            seen.add(key)
            where = f"Table {key!r}"
        unknown = set(table) - {
            "key",
            "title",
            "columns",
            "rows",
            "source",
            "unit",
            "chart",
            "note",
        }
        if unknown:
            problems.append(f"{where}: unknown fields {', '.join(sorted(unknown))}.")
        for field in ("title", "source"):
            if not isinstance(table.get(field), str) or not table.get(field, "").strip():
                problems.append(f"{where}: `{field}` is required (every table cites its source).")
        for field in ("unit", "note"):
            if not isinstance(table.get(field, ""), str):
                problems.append(f"{where}: `{field}` must be text.")
        if table.get("chart", "") not in CARD_CHARTS:
            problems.append(f"{where}: `chart` must be one of {', '.join(map(repr, CARD_CHARTS))}.")
        columns = table.get("columns")
        if (
            not isinstance(columns, list)
            or not 2 <= len(columns) <= MAX_COLUMNS
            or not all(isinstance(c, str) and c.strip() for c in columns)
        ):
            problems.append(f"{where}: `columns` must be 2 to {MAX_COLUMNS} column names.")
            continue
        rows = table.get("rows")
        if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS:
            problems.append(f"{where}: `rows` must be a list of 1 to {MAX_ROWS} rows.")
            continue
        for r, row in enumerate(rows, start=1):
            if not isinstance(row, list) or len(row) != len(columns):
                problems.append(f"{where}, row {r}: must have {len(columns)} cells.")
            elif not all(_cell_ok(cell) for cell in row):
                problems.append(f"{where}, row {r}: cells are numbers, text or null.")
    return problems


def metadata_problems(metadata) -> list[str]:
    if not isinstance(metadata, list) or not all(
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(part, str) and part.strip() for part in pair)
        for pair in metadata
    ):
        return ["The metadata must be a list of [label, value] pairs of text."]
    return []


def card_content_check(*, summary: str, metadata, body: str, tables) -> None:
    """Raise InvalidInput (every problem listed) unless the content makes a valid card."""
    problems = metadata_problems(metadata) + tables_problems(tables)
    if not summary.strip():
        problems.append("The summary is required.")
    if not body.strip():
        problems.append("The card's text is required.")
    if not problems:
        keys = {t["key"] for t in tables}
        problems += [
            f"The text places a table {key!r} that the card does not have."
            for key in TABLE_LINE.findall(body)
            if key not in keys
        ]
    if problems:
        raise InvalidInput(problems[0], extra={"problems": problems})


# --- Rendering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A piece of a rendered card: Markdown already rendered, or one of its tables."""

    html: SafeString | None = None
    table: dict | None = None


def card_blocks(*, body: str, tables: list) -> list[Block]:
    """The card in reading order: its text, with each `[table: KEY]` line replaced by that
    table; tables the text does not place come last, so none is ever hidden."""
    by_key = {t["key"]: t for t in tables}
    blocks: list[Block] = []
    placed: set[str] = set()
    start = 0
    for match in TABLE_LINE.finditer(body):
        blocks.append(Block(html=markdown_render(body[start : match.start()])))
        key = match.group(1)
        if key in by_key and key not in placed:
            blocks.append(Block(table=by_key[key]))
            placed.add(key)
        start = match.end()
    blocks.append(Block(html=markdown_render(body[start:])))
    blocks += [Block(table=t) for t in tables if t["key"] not in placed]
    return [b for b in blocks if b.table is not None or str(b.html).strip()]


def cell_text(value) -> str:
    """A cell as the page shows it: learning rates as 3.0e-4, other numbers as written."""
    if value is None:
        return ""
    if isinstance(value, float) and value and abs(value) < 0.01:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return str(value)


# --- Downloads -----------------------------------------------------------------------------


def table_csv(table: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([csv_cell(c) for c in table["columns"]])
    for row in table["rows"]:
        writer.writerow([csv_cell(cell) for cell in row])
    return out.getvalue()


def table_json(table: dict, *, variant, version: int, url: str) -> str:
    document = {
        "model": str(variant),
        "size": variant.size,
        "card_version": version,
        "card_url": url,
        "key": table["key"],
        "title": table["title"],
        "source": table["source"],
        "unit": table.get("unit", ""),
        "note": table.get("note", ""),
        "columns": table["columns"],
        "rows": table["rows"],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
