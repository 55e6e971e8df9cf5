"""What every CSV download of the portal shares (the review console's decision export, the
model card's tables, an evaluation's items).

`csv_cell` is the one rule for a cell: text starting with = + - @ (or a tab or carriage
return) would run as a formula when a spreadsheet opens the file, so it gets a leading
apostrophe; numbers stay numbers (a negative figure is not a formula); lists and objects
are written as JSON; None is an empty cell.
"""

from __future__ import annotations

import json

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)
