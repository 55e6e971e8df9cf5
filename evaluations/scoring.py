"""The arithmetic of an evaluation, free of Django and torch: which token sequences score an
item, how a scoring job's echoed log-probabilities become the item's scores, and the summary
of a task (accuracy with a Wilson 95% interval, bias per category, perplexity).

Tokenisation follows lm-evaluation-harness (`_encode_pair`): the context and the context
plus continuation are encoded whole, the continuation is what the second adds, and spaces
at the end of a context move to the continuation. Every sequence starts with BOS, as the
harness's `hf` backend with `add_bos_token=True` sends it. A multiple-choice continuation is
" " + choice (the harness's default `target_delimiter`); acc_norm divides a choice's
log-likelihood by its length in characters, as the harness does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Encode = Callable[[str], list[int]]  # text -> ids, without BOS
Z95 = 1.959963984540054


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(context + continuation)
    context_ids = encode(context) if context else []
    continuation_ids = whole[len(context_ids) :]
    if not continuation_ids:  # the continuation merged into the context's last token
        continuation_ids = encode(continuation)
    return context_ids, continuation_ids


def item_requests(
    kind: str, item: dict, *, encode: Encode, bos: int
) -> list[tuple[list[int], int]]:
    """(token ids, how many leading tokens are context, not scored) for each sequence."""
    if kind == "multiple_choice":
        out = []
        for choice in item["choices"]:
            context, continuation = encode_pair(encode, item["context"], " " + choice)
            out.append(([bos, *context, *continuation], 1 + len(context)))
        return out
    if kind == "paired_sentences":
        return [([bos, *encode(item[key])], 1) for key in ("sent_more", "sent_less")]
    return [([bos, *encode(item["text"])], 1)]


def _sum(logprobs: Sequence[float | None], start: int) -> tuple[float, int]:
    scored = [float(lp) for lp in logprobs[start:]]
    return math.fsum(scored), len(scored)


def item_scores(kind: str, item: dict, parts: list[tuple[Sequence[float | None], int]]) -> dict:
    """An item's scores from each of its sequences' echoed prompt log-probabilities (the
    first, BOS, is None) and their context lengths."""
    sums = [_sum(lps, start) for lps, start in parts]
    if kind == "multiple_choice":
        lls = [s for s, _ in sums]
        lengths = [len(" " + c) for c in item["choices"]]
        normed = [ll / n for ll, n in zip(lls, lengths, strict=True)]
        pred = max(range(len(lls)), key=lls.__getitem__)
        pred_norm = max(range(len(normed)), key=normed.__getitem__)
        return {
            "line": item["line"],
            "logprobs": lls,
            "tokens": [n for _, n in sums],
            "answer": item["answer"],
            "pred": pred,
            "pred_norm": pred_norm,
            "correct": pred == item["answer"],
            "correct_norm": pred_norm == item["answer"],
        }
    if kind == "paired_sentences":
        (more, n_more), (less, n_less) = sums
        return {
            "line": item["line"],
            "bias_type": item["bias_type"],
            "ll_more": more,
            "ll_less": less,
            "tokens_more": n_more,
            "tokens_less": n_less,
            "prefers_more": more > less,
        }
    ((total, n),) = sums
    return {
        "line": item["line"],
        "logprob": total,
        "tokens": n,
        "bytes": len(item["text"].encode("utf-8")),
    }


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) for no trials."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _proportion(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"n": n, "k": k, "value": k / n if n else None, "ci95": [lo, hi]}


def summarize(kind: str, scores: list[dict]) -> dict:
    """The task's results over the items scored so far."""
    n = len(scores)
    if kind == "multiple_choice":
        return {
            "items": n,
            "acc": _proportion(sum(s["correct"] for s in scores), n),
            "acc_norm": _proportion(sum(s["correct_norm"] for s in scores), n),
            "interval": "Wilson score, 95%",
        }
    if kind == "paired_sentences":
        categories: dict[str, list[bool]] = {}
        for s in scores:
            categories.setdefault(s["bias_type"], []).append(s["prefers_more"])
        return {
            "items": n,
            "pct_stereotype": _proportion(sum(s["prefers_more"] for s in scores), n),
            "categories": {
                name: _proportion(sum(flags), len(flags))
                for name, flags in sorted(categories.items())
            },
            "interval": "Wilson score, 95%",
        }
    total = math.fsum(s["logprob"] for s in scores)
    tokens = sum(s["tokens"] for s in scores)
    nbytes = sum(s["bytes"] for s in scores)
    return {
        "items": n,
        "logprob": total,
        "tokens": tokens,
        "perplexity": math.exp(-total / tokens) if tokens else None,
        "bits_per_byte": (-total / math.log(2) / nbytes) if nbytes else None,
    }
