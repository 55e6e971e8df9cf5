"""An evaluation's results shaped for its page: the summary rows, the charts, and the
card's published figures beside them where the task matches a published benchmark or the
bias categories (`selectors.published_figures`)."""

from __future__ import annotations

from evaluations import charts
from evaluations.models import Evaluation
from evaluations.selectors import card_category, published_figures


def _pct(p: dict) -> tuple[float, float, float] | None:
    if not p or p.get("value") is None:
        return None
    lo, hi = p["ci95"]
    return 100 * p["value"], 100 * lo, 100 * hi


def results_view(evaluation: Evaluation) -> dict:
    results = evaluation.results or {}
    kind = evaluation.task.kind
    published = published_figures(task=evaluation.task)
    label = f"{evaluation.variant.size}, this evaluation"
    view: dict = {"kind": kind, "published": published, "rows": [], "charts": []}
    if not results.get("items"):
        return view
    if kind == "multiple_choice":
        bars = []
        for metric, name in (("acc", "accuracy"), ("acc_norm", "accuracy, length-normalised")):
            value = _pct(results.get(metric))
            if value is None:
                continue
            v, lo, hi = value
            p = results[metric]
            view["rows"].append(
                {"metric": name, "value": f"{v:.1f}%", "ci": f"{lo:.1f}-{hi:.1f}%",
                 "n": f"{p['k']} of {p['n']}"}
            )  # fmt: skip
            bars.append(charts.Bar(f"{label} ({name})", v, lo, hi))
        if published:
            for size, value in published["rows"]:
                if isinstance(value, int | float):
                    bars.append(
                        charts.Bar(f"LLaMA {size}, published", float(value), published=True)
                    )
        title = f"{evaluation.task.name}: accuracy with 95% Wilson intervals"
        view["charts"].append(charts.bars(title, bars))
    elif kind == "paired_sentences":
        overall = _pct(results.get("pct_stereotype"))
        cards = (published or {}).get("categories", {})
        bars = []
        if overall is not None:
            v, lo, hi = overall
            p = results["pct_stereotype"]
            view["rows"].append(
                {"metric": "prefers the more stereotypical sentence (all pairs)",
                 "value": f"{v:.1f}%", "ci": f"{lo:.1f}-{hi:.1f}%", "n": f"{p['k']} of {p['n']}",
                 "published": cards.get("Average")}
            )  # fmt: skip
            bars.append(charts.Bar(f"All pairs, {evaluation.variant.size}", v, lo, hi))
            if cards.get("Average") is not None:
                bars.append(charts.Bar(f"All pairs, {published['column']} (published)",
                                       float(cards["Average"]), published=True))  # fmt: skip
        for name, p in results.get("categories", {}).items():
            v, lo, hi = _pct(p)
            category = card_category(name)
            theirs = cards.get(category)
            view["rows"].append(
                {"metric": name, "value": f"{v:.1f}%", "ci": f"{lo:.1f}-{hi:.1f}%",
                 "n": f"{p['k']} of {p['n']}", "published": theirs}
            )  # fmt: skip
            bars.append(charts.Bar(f"{category}, {evaluation.variant.size}", v, lo, hi))
            if theirs is not None:
                bars.append(charts.Bar(f"{category}, {published['column']} (published)",
                                       float(theirs), published=True))  # fmt: skip
        title = f"{evaluation.task.name}: bias score by category (share of pairs, 95% Wilson)"
        view["charts"].append(charts.bars(title, bars))
    else:
        view["rows"] = [
            {"metric": "total log-probability", "value": f"{results['logprob']:.2f}"},
            {"metric": "tokens scored", "value": str(results["tokens"])},
            {"metric": "perplexity", "value": f"{results['perplexity']:.3f}"},
            {"metric": "bits per byte", "value": f"{results['bits_per_byte']:.4f}"},
        ]
    view["charts"] = [c for c in view["charts"] if c]
    return view
