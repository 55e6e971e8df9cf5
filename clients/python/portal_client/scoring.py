"""Scoring from Python: `Client.score` and `Client.tokenize` / `Client.detokenize`.

    portal = Client("https://portal.example.org", "llp_...")   # token with 'generate'
    for s in portal.score("The capital of France is", [" Paris", " Rome"], model="7B"):
        print(s.continuation, s.logprob, s.is_greedy)

`score` asks what lm-evaluation-harness asks: the log-likelihood of each continuation after
the context. It splits the tokens the same way (the context's tokens, then the rest of
the whole text's), sends every context+continuation as token ids in one request to the
OpenAI-compatible route (`echo`, `logprobs`, `max_tokens: 0`: a batched prefill on the
worker, nothing generated) and sums the continuation's token log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from portal_client.client import PortalClientError
from portal_client.jobs import BadParameters, _error_for
from portal_client.text import text_problem


@dataclass(frozen=True)
class Score:
    """One continuation's log-likelihood after the context (natural log, summed over its
    tokens); `is_greedy`: every one of its tokens was the model's likeliest."""

    continuation: str
    logprob: float
    is_greedy: bool
    tokens: list[int]
    token_logprobs: list[float]


class ScoringMixin:
    """Mixed into `portal_client.Client` (which provides url, token, timeout, _session)."""

    def _openai_post(self, path: str, body: dict[str, Any], *, timeout=None) -> dict:
        for key in ("prompt", "context"):
            value = body.get(key)
            if isinstance(value, str) and (why := text_problem(value)) is not None:
                raise BadParameters(f"`{key}` {why}.", code="invalid_text", param=key)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            response = self._session().post(
                f"{self.url}/v1/{path}", json=body, headers=headers, timeout=timeout or self.timeout
            )
        except requests.RequestException as exc:
            raise PortalClientError(
                f"Cannot reach the portal at {self.url}: {type(exc).__name__}.", code="unreachable"
            ) from None
        if response.status_code >= 400:
            raise _error_for(response)
        return response.json()

    def tokenize(self, text: str, *, model: str, add_special_tokens: bool = True) -> list[int]:
        """The token ids the model sees for `text` (with BOS first unless
        add_special_tokens=False)."""
        body = {"model": model, "prompt": text, "add_special_tokens": add_special_tokens}
        return self._openai_post("tokenize", body)["tokens"]

    def detokenize(self, tokens: Sequence[int], *, model: str) -> str:
        return self._openai_post("detokenize", {"model": model, "tokens": list(tokens)})["prompt"]

    def score(
        self,
        context: str,
        continuations: str | Sequence[str],
        *,
        model: str,
        add_bos: bool = True,
    ) -> list[Score]:
        """Log-likelihood of each continuation after `context`, in one batched request.

        With `add_bos` (the default, as LLaMA was trained) BOS comes first. A continuation
        usually starts with a space: " Paris", not "Paris".
        """
        if isinstance(continuations, str):
            continuations = [continuations]
        if not continuations:
            return []
        for value in (context, *continuations):
            if (why := text_problem(value)) is not None:
                raise BadParameters(f"a context or continuation {why}.", code="invalid_text")
        head = self.tokenize(context, model=model, add_special_tokens=add_bos)
        prompts, starts = [], []
        for continuation in continuations:
            whole = self.tokenize(context + continuation, model=model, add_special_tokens=add_bos)
            # The continuation's tokens are the whole text's after the context's (as
            # lm-evaluation-harness splits them); the first token has no score of its own.
            start = len(head) if whole[: len(head)] == head else _common(head, whole)
            if not 1 <= start < len(whole):
                raise BadParameters(
                    f"Nothing to score in {continuation!r}: it adds no token after the "
                    "context, or nothing (not even BOS) comes before it.",
                    param="continuations",
                )
            prompts.append(whole)
            starts.append(start)
        body = {
            "model": model,
            "prompt": prompts,
            "max_tokens": 0,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
        }
        answer = self._openai_post("completions", body, timeout=(self.timeout, 600))
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        scores = []
        for continuation, ids, start, choice in zip(
            continuations, prompts, starts, choices, strict=True
        ):
            lp = choice["logprobs"]
            token_logprobs = lp["token_logprobs"][start:]
            tops = lp["top_logprobs"][start:]
            greedy = all(
                top and value >= max(top.values())
                for value, top in zip(token_logprobs, tops, strict=True)
            )
            scores.append(
                Score(
                    continuation=continuation,
                    logprob=float(sum(token_logprobs)),
                    is_greedy=greedy,
                    tokens=ids[start:],
                    token_logprobs=token_logprobs,
                )
            )
        return scores


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
