"""The client refuses, before sending, exactly the text the portal refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from portal_client import Client
from portal_client.jobs import BadParameters
from portal_client.text import body_problem
from portal_client.text import text_problem as client_rule

from core.text import find_bad_text
from core.text import text_problem as portal_rule

_any_char = st.one_of(
    st.characters(codec=None, categories=None, exclude_categories=()),
    st.sampled_from(["\x00", "\ud800", "\udfff"]),
)
any_text = st.lists(_any_char, max_size=16).map("".join)


@settings(max_examples=300)
@given(text=any_text)
def test_the_client_and_the_portal_share_one_rule(text):
    assert client_rule(text) == portal_rule(text)


@settings(max_examples=200)
@given(prompt=any_text, stop=st.lists(any_text, max_size=3))
def test_a_body_is_judged_as_the_portal_receives_it(prompt, stop):
    body = {"model": "demo", "prompt": prompt, "stop": stop}

    assert body_problem(body) == find_bad_text(json.loads(json.dumps(body)))


@pytest.mark.parametrize(
    ("prompt", "stop", "param"),
    [("a\x00b", None, "prompt"), ("fine", ["\n", "x\udc00"], "stop[1]")],
)
def test_submit_refuses_before_sending(prompt, stop, param):
    client = Client("http://127.0.0.1:9", "llp_" + "t" * 43)  # nothing listens there

    with pytest.raises(BadParameters) as refused:
        client.submit("demo", prompt, stop=stop)

    assert refused.value.param == param
    assert refused.value.code == "invalid_text"
    assert f"`{param}`" in refused.value.message
