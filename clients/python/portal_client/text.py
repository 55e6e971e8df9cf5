"""The portal's rule for text (its `core/text.py`), checked before a request is sent.

The portal refuses NUL characters and lone surrogates (code points U+D800 to U+DFFF not in a
pair: not Unicode characters, no UTF-8 form) in any text it stores. A surrogate pair that
Python holds as two code points is fine: JSON sends it as one character. Checking here
names the offending parameter before a round trip; the portal checks again whatever the
client does.
"""

from __future__ import annotations

import json
from typing import Any


def text_problem(value: str) -> str | None:
    """Why the portal would refuse `value`, in a sentence; None when it accepts it."""
    for position, char in enumerate(value):
        code = ord(char)
        if code == 0:
            return (
                f"contains a NUL character (U+0000) at position {position}; "
                "text may not contain NUL characters"
            )
        if 0xD800 <= code <= 0xDFFF:
            return (
                f"contains a lone surrogate (U+{code:04X}) at position {position}, which is "
                "not a Unicode character; send text as valid UTF-8"
            )
    return None


def _strings(value: Any, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield path or "(key)", key
            yield from _strings(item, f"{path}.{key}" if path else str(key))


def body_problem(body: dict) -> tuple[str, str] | None:
    """The first parameter of a JSON body the portal would refuse: (name, why), or None."""
    received = json.loads(json.dumps(body))  # as the portal decodes it (pairs joined)
    for where, text in _strings(received, ""):
        problem = text_problem(text)
        if problem:
            return where, problem
    return None
