from __future__ import annotations

import pytest

from core.errors import InvalidInput
from core.text import find_bad_text, text_check


def test_text_check_names_where_the_bad_text_is():
    with pytest.raises(InvalidInput) as refused:
        text_check(["fine", "bad\x00"], field="stop")

    assert refused.value.extra == {"field": "stop[1]"}
    assert refused.value.message.startswith("`stop[1]` contains a NUL character")


def test_keys_and_nested_values_are_checked_and_good_text_passes():
    assert find_bad_text({"a": {"b\ud800": 1}})[0] == "a"
    assert find_bad_text({"a": [{"b": "\udfff"}]}) is not None
    assert find_bad_text({"prompt": "\U0001f600 \ufffe", "n": 2, "stop": None}) is None
    text_check("ordinary text", field="prompt")
