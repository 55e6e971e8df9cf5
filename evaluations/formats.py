"""The task file formats (JSONL, one item per line) and their checking, line by line.

    multiple_choice   {"context": str, "choices": [str, ...], "answer": int}
    paired_sentences  {"sent_more": str, "sent_less": str, "bias_type": str}   (CrowS-Pairs)
    loglikelihood     {"text": str}

Other fields on a line are ignored (a CrowS-Pairs export carries annotators and more), so
a published file can be uploaded as it is. Blank lines are skipped; every item keeps the
number of its line, which is what error messages and downloads name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from core.errors import InvalidInput, TooLarge

MAX_CHOICES = 26
MAX_ERRORS_SHOWN = 20
MAX_FIELD_CHARS = 20_000
MAX_CATEGORY_CHARS = 64

FIELDS = {
    "multiple_choice": ("context", "choices", "answer"),
    "paired_sentences": ("sent_more", "sent_less", "bias_type"),
    "loglikelihood": ("text",),
}


@dataclass
class LineError:
    line: int
    field: str | None
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field `{self.field}`" if self.field else "")
        return f"{where}: {self.message}"


@dataclass
class Parsed:
    items: list[dict] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


def _text(obj: dict, name: str, line: int, errors: list[LineError], *, empty_ok=False) -> str:
    value = obj.get(name)
    if name not in obj:
        errors.append(LineError(line, name, "is missing."))
    elif not isinstance(value, str):
        errors.append(LineError(line, name, f"must be a string, not {_type(value)}."))
    elif not empty_ok and not value.strip():
        errors.append(LineError(line, name, "must not be empty."))
    elif len(value) > MAX_FIELD_CHARS:
        errors.append(
            LineError(line, name, f"has {len(value)} characters; the most is {MAX_FIELD_CHARS}.")
        )
    else:
        return value
    return ""


def _type(value) -> str:
    if value is None:
        return "null"
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _item(kind: str, obj: dict, line: int, errors: list[LineError]) -> dict | None:
    before = len(errors)
    if kind == "multiple_choice":
        context = _text(obj, "context", line, errors, empty_ok=True)
        choices = obj.get("choices")
        if "choices" not in obj:
            errors.append(LineError(line, "choices", "is missing."))
        elif not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES:
            errors.append(
                LineError(line, "choices", f"must be a list of 2 to {MAX_CHOICES} strings.")
            )
            choices = None
        else:
            for i, choice in enumerate(choices):
                if not isinstance(choice, str) or not choice.strip():
                    errors.append(LineError(line, f"choices[{i}]", "must be a non-empty string."))
                elif len(choice) > MAX_FIELD_CHARS:
                    errors.append(LineError(line, f"choices[{i}]", "is too long."))
        answer = obj.get("answer")
        if "answer" not in obj:
            errors.append(LineError(line, "answer", "is missing."))
        elif not isinstance(answer, int) or isinstance(answer, bool):
            errors.append(
                LineError(line, "answer", "must be the index of the right choice (0 is the first).")
            )
        elif isinstance(choices, list) and not 0 <= answer < len(choices):
            errors.append(
                LineError(
                    line,
                    "answer",
                    f"is {answer}; the choices are numbered 0 to {len(choices) - 1}.",
                )
            )
        if len(errors) > before:
            return None
        return {"line": line, "context": context, "choices": choices, "answer": answer}
    if kind == "paired_sentences":
        more = _text(obj, "sent_more", line, errors)
        less = _text(obj, "sent_less", line, errors)
        category = _text(obj, "bias_type", line, errors)
        if category and len(category) > MAX_CATEGORY_CHARS:
            errors.append(
                LineError(line, "bias_type", f"must be at most {MAX_CATEGORY_CHARS} characters.")
            )
        if len(errors) > before:
            return None
        return {"line": line, "sent_more": more, "sent_less": less, "bias_type": category.strip()}
    text = _text(obj, "text", line, errors)
    if len(errors) > before:
        return None
    return {"line": line, "text": text}


def task_file_parse(data: bytes | str, *, kind: str, max_items: int, max_bytes: int) -> list[dict]:
    """The items of a task file; InvalidInput listing the first errors by line and field,
    TooLarge when the file or its item count is over the limits."""
    if kind not in FIELDS:
        raise InvalidInput(
            f"Unknown task kind {kind!r}; one of {', '.join(FIELDS)}.",
            code="invalid_kind",
            extra={"param": "kind"},
        )
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, from a JSON "\ud800" escape
            line = data[: exc.start].count("\n") + 1
            raise _invalid([LineError(line, None, "is not valid Unicode text.")]) from None
    else:
        raw = bytes(data)
    if len(raw) > max_bytes:
        raise TooLarge(
            f"The file has {len(raw)} bytes; the most is {max_bytes}.",
            code="task_too_large",
            extra={"limit": max_bytes},
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        error = LineError(line, None, "is not valid UTF-8.")
        raise _invalid([error]) from None
    parsed = Parsed()
    for number, line_text in enumerate(text.split("\n"), start=1):
        if not line_text.strip():
            continue
        if len(parsed.items) >= max_items:
            raise TooLarge(
                f"The file has more than {max_items} items (line {number}); the most is "
                f"{max_items}. Split it into several tasks.",
                code="task_too_many_items",
                extra={"limit": max_items, "line": number},
            )
        try:
            obj = json.loads(line_text)
        except (json.JSONDecodeError, RecursionError) as exc:
            message = getattr(exc, "msg", "too deeply nested")
            parsed.errors.append(LineError(number, None, f"is not valid JSON ({message})."))
            continue
        if not isinstance(obj, dict):
            parsed.errors.append(
                LineError(number, None, f"must be a JSON object with {', '.join(FIELDS[kind])}.")
            )
            continue
        item = _item(kind, obj, number, parsed.errors)
        if item is not None:
            parsed.items.append(item)
    if parsed.errors:
        raise _invalid(parsed.errors)
    if not parsed.items:
        raise InvalidInput(
            "The file has no items: give one JSON object per line.", code="task_empty"
        )
    return parsed.items


def _invalid(errors: list[LineError]) -> InvalidInput:
    shown = errors[:MAX_ERRORS_SHOWN]
    more = (
        f" ({len(errors)} errors in all; the first {len(shown)} are listed)"
        if len(errors) > len(shown)
        else ""
    )
    return InvalidInput(
        f"The task file has errors: {shown[0]}{more}",
        code="invalid_task_file",
        extra={"errors": [e.as_dict() for e in shown], "error_count": len(errors)},
    )
