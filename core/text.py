"""One rule for text that enters the portal, at every entry point.

PostgreSQL refuses two kinds of Python strings, and SQLite stores them only to fail later:

- NUL (U+0000): `text` columns refuse it outright, and `jsonb` refuses the `\\u0000`
  escape, so a prompt or stop sequence with one fails at the INSERT (a 500 without a rule).
- Lone surrogates (U+D800 to U+DFFF not in a valid pair): they are not Unicode scalar
  values and have no UTF-8 form. A JSON body can carry one as a `\\ud800` escape; psycopg
  cannot encode it, `jsonb` refuses the escape, and on SQLite the row is stored and then
  every page or API answer that shows it fails to encode (a job list answering 500 forever).

Every other code point is accepted, noncharacters and private use included: PostgreSQL stores
them and the answers encode them.

`TextGuardMiddleware` applies the rule to every request before a view sees it (path, query,
form fields, JSON bodies, headers): one place, so a new view or serializer cannot forget it.
`text_check` is the same rule for a service called from outside a request (a management
command, a task); `text_problem` is the rule itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse

from core.errors import InvalidInput, render_error

_SURROGATES = range(0xD800, 0xE000)


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored, in a sentence; None when it can."""
    for position, char in enumerate(value):
        code = ord(char)
        if code == 0:
            return (
                f"contains a NUL character (U+0000) at position {position}; "
                "text may not contain NUL characters"
            )
        if code in _SURROGATES:
            return (
                f"contains a lone surrogate (U+{code:04X}) at position {position}, which is "
                "not a Unicode character; send text as valid UTF-8"
            )
    return None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys included), with where it is: `stop[1]`, `a.b`."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield path or "(key)", key
            yield from _strings(item, f"{path}.{key}" if path else str(key))


def find_bad_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first string in `value` (a str, or JSON data) that breaks the rule:
    (where, problem), or None."""
    for where, text in _strings(value, path):
        problem = text_problem(text)
        if problem:
            return where or "(body)", problem
    return None


def text_check(value: Any, *, field: str) -> None:
    """Raise `InvalidInput` (a 400 that names `field`) when `value` breaks the rule."""
    found = find_bad_text(value, field)
    if found:
        where, problem = found
        raise InvalidInput(f"`{where}` {problem}.", code="invalid_text", extra={"field": where})


def _request_problem(request: HttpRequest) -> tuple[str, str] | None:
    if "\x00" in request.path_info:
        return "(path)", text_problem(request.path_info) or ""
    for name, value in request.META.items():
        if name.startswith("HTTP_") and isinstance(value, str) and "\x00" in value:
            return f"header {name[5:].replace('_', '-').title()}", text_problem(value) or ""
    for name, values in request.GET.lists():
        if found := find_bad_text({name: values}):
            return found[0].split("[", 1)[0], found[1]
    if request.method in ("POST", "PUT", "PATCH"):
        content_type = request.content_type or ""
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            for name, values in request.POST.lists():
                if found := find_bad_text({name: values}):
                    return found[0].split("[", 1)[0], found[1]
        elif content_type == "application/json" or content_type.endswith("+json"):
            try:
                data = json.loads(request.body)
            except (ValueError, UnicodeDecodeError):
                return None  # not JSON: the view's own parser says so
            return find_bad_text(data)
    return None


class TextGuardMiddleware:
    """Refuses, with a 400 that names the parameter, a request carrying text that cannot be
    stored (see the module's docstring). JSON answers carry the portal's error shape plus
    OpenAI's `type` and `param`, so the OpenAI-style routes keep their clients' shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        found = _request_problem(request)
        if found is None:
            return self.get_response(request)
        where, problem = found
        # OpenAI's `param` names the top-level parameter; `field` says where inside it.
        param = where.split("[", 1)[0].split(".", 1)[0]
        error = InvalidInput(
            f"`{where}` {problem}.",
            code="invalid_text",
            extra={"field": where, "param": param, "type": "invalid_request_error"},
        )
        return render_error(request, error)
