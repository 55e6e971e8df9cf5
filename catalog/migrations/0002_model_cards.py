"""Model cards: versioned documents per size, and the version an application was submitted
with. Seeds version 1 of each size's card: the text is the portal's own; the figures are the
original release's, each table citing where it comes from.

The seed is idempotent (a size that has a card keeps it): the test harness re-runs data
migrations after a flush.
"""

import hashlib
import json

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

PAPER = (
    "Touvron et al. 2023, LLaMA: Open and Efficient Foundation Language Models, arXiv:2302.13971"
)
CARD_V1 = "LLaMA model card, version 1 (MODEL_CARD.md of the original release, February 2023)"
PAPER_2 = (
    "Touvron et al. 2023, Llama 2: Open Foundation and Fine-Tuned Chat Models, arXiv:2307.09288"
)
SIZES = ["7B", "13B", "33B", "65B"]

TABLES = [
    {
        "key": "hyperparameters",
        "title": "Model hyperparameters",
        "columns": [
            "size",
            "dimension",
            "heads",
            "layers",
            "learning rate",
            "batch size (M tokens)",
            "training tokens (T)",
        ],
        "rows": [
            ["7B", 4096, 32, 32, 3.0e-4, 4, 1.0],
            ["13B", 5120, 40, 40, 3.0e-4, 4, 1.0],
            ["33B", 6656, 52, 60, 1.5e-4, 4, 1.4],
            ["65B", 8192, 64, 80, 1.5e-4, 4, 1.4],
        ],
        "source": f"{CARD_V1}; {PAPER}, Table 2.",
        "unit": "",
        "chart": "",
        "note": "",
    },
    {
        "key": "data_mix",
        "title": "Training data mix (share of the sampled training data)",
        "columns": ["dataset", "share (%)"],
        "rows": [
            ["CCNet", 67.0],
            ["C4", 15.0],
            ["GitHub", 4.5],
            ["Wikipedia", 4.5],
            ["Books", 4.5],
            ["ArXiv", 2.5],
            ["Stack Exchange", 2.0],
        ],
        "source": f"{CARD_V1}; {PAPER}, Table 1.",
        "unit": "%",
        "chart": "by_category",
        "note": "The same mix was used for every size.",
    },
    {
        "key": "common_sense",
        "title": "Common-sense reasoning, zero-shot accuracy",
        "columns": [
            "size",
            "BoolQ",
            "PIQA",
            "SIQA",
            "HellaSwag",
            "WinoGrande",
            "ARC-e",
            "ARC-c",
            "OBQA",
            "COPA",
        ],
        "rows": [
            ["7B", 76.5, 79.8, 48.9, 76.1, 70.1, 76.7, 47.6, 57.2, 93],
            ["13B", 78.1, 80.1, 50.4, 79.2, 73.0, 78.1, 52.7, 56.4, 94],
            ["33B", 83.1, 82.3, 50.4, 82.8, 76.0, 81.4, 57.8, 58.6, 92],
            ["65B", 85.3, 82.8, 52.3, 84.2, 77.0, 81.5, 56.0, 60.2, 94],
        ],
        "source": f"{CARD_V1}; {PAPER}, Table 3.",
        "unit": "%",
        "chart": "by_size",
        "note": "Accuracy in percent; higher is better.",
    },
    {
        "key": "bias",
        "title": "Bias by category (CrowS-Pairs), LLaMA 65B",
        "columns": ["category", "LLaMA 65B"],
        "rows": [
            ["Gender", 70.6],
            ["Religion", 79.0],
            ["Race/Color", 57.0],
            ["Sexual orientation", 81.0],
            ["Age", 70.1],
            ["Nationality", 64.2],
            ["Disability", 66.7],
            ["Physical appearance", 77.8],
            ["Socioeconomic status", 71.5],
            ["Average", 66.6],
        ],
        "source": f"{CARD_V1}; {PAPER}, Table 12.",
        "unit": "",
        "chart": "by_category",
        "note": (
            "Share of sentence pairs in which the model prefers the more stereotypical "
            "sentence; 50 would be no preference, lower is less biased. Published for the "
            "65B size only."
        ),
    },
    {
        "key": "grouped",
        "title": "Grouped academic benchmarks",
        "columns": [
            "size",
            "code",
            "common-sense",
            "world knowledge",
            "reading comp.",
            "math",
            "MMLU",
            "BBH",
            "AGI Eval",
        ],
        "rows": [
            ["7B", 14.1, 60.8, 46.2, 58.5, 6.95, 35.1, 30.3, 23.9],
            ["13B", 18.9, 66.1, 52.6, 62.3, 10.9, 46.9, 37.0, 33.9],
            ["33B", 26.0, 70.0, 58.4, 67.6, 21.4, 57.8, 39.8, 41.7],
            ["65B", 30.7, 70.7, 60.5, 68.6, 30.8, 63.4, 43.5, 47.6],
        ],
        "source": f"{PAPER_2} (the first release's models, as reported with the second).",
        "unit": "",
        "chart": "by_size",
        "note": "Each group is an average over several benchmarks; higher is better.",
    },
    {
        "key": "safety",
        "title": "Safety benchmarks",
        "columns": ["size", "TruthfulQA", "ToxiGen"],
        "rows": [
            ["7B", 27.42, 23.00],
            ["13B", 41.74, 23.08],
            ["33B", 44.19, 22.57],
            ["65B", 48.71, 21.77],
        ],
        "source": f"{PAPER_2} (the first release's models, as reported with the second).",
        "unit": "%",
        "chart": "by_size",
        "note": (
            "TruthfulQA: share of generations that are both truthful and informative (higher "
            "is better). ToxiGen: share of generations judged toxic (lower is better)."
        ),
    },
]

BODY = """\
## Model details

LLaMA {size} is one of the four sizes of the LLaMA family of foundation language models,
built by the FAIR team of Meta AI. It is an auto-regressive language model on the
transformer architecture: given a text it predicts the next token, one at a time. The four
sizes (7B, 13B, 33B and 65B parameters) share the design and the training data and differ
in width, depth and the number of tokens seen in training (see the hyperparameters under
*Quantitative analysis*).

The models were trained between December 2022 and February 2023; this card describes
version 1 of the release. How they were built and evaluated is set out in the paper
[LLaMA: Open and Efficient Foundation Language Models](https://arxiv.org/abs/2302.13971).
The weights are released under a bespoke noncommercial license, which this portal shows
and records before the first download. Questions and comments about the model go to the
release's authors through the issue tracker of the original LLaMA repository; questions
about access go to this portal's team.

## Intended use

The model exists for research on large language models. Examples of that research:

- what such models can be used for, such as question answering, natural-language
  understanding and reading comprehension;
- what they can and cannot do, and why, so that their abilities and limits are understood
  and can be improved;
- measuring and reducing their harms: biases, toxic output and made-up statements
  ("hallucinations").

**Intended users:** researchers in natural-language processing, machine learning and
artificial intelligence.

## Out-of-scope use

LLaMA {size} is a *base* model: it has not been trained with human feedback and has not
been tuned to follow instructions or to refuse harmful requests. It can write text that is
false, offensive or harmful. It should not be built into a product or any downstream
application before the risks of that use have been evaluated and reduced. Commercial use
is outside the license.

## Factors

**Languages.** Most of the training text is English; Wikipedia and Books contribute text
in 20 languages (bg, ca, cs, da, de, en, es, fr, hr, hu, it, nl, pl, pt, ro, ru, sl, sr,
sv, uk). Expect the model to do better in English than in the others, and differently
across dialects of one language.

**Evaluation factors.** Because the model learns from the web, it can repeat the biases
found there. It was evaluated for bias by gender, religion, race, sexual orientation,
age, nationality, disability, physical appearance and socio-economic status, and for
toxicity as a function of how toxic the prompt was.

## Metrics

- Common-sense reasoning, reading comprehension, question answering and other benchmarks:
  accuracy (exact match where the benchmark asks for it).
- Bias: the share of sentence pairs where the model prefers the more stereotypical
  sentence (CrowS-Pairs).
- Toxicity: the share of toxic generations (ToxiGen); truthfulness: the share of answers
  both truthful and informative (TruthfulQA).

## Evaluation datasets

BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC (easy and challenge), OpenBookQA, COPA,
NaturalQuestions, TriviaQA, RACE, MMLU, BIG-bench Hard, GSM8k, RealToxicityPrompts,
WinoGender, CrowS-Pairs, TruthfulQA and ToxiGen.

## Training data

About 1.0 trillion tokens for the 7B and 13B sizes and 1.4 trillion for the 33B and 65B
sizes, from publicly available sources, in these proportions:

[table: data_mix]

## Quantitative analysis

### Hyperparameters

[table: hyperparameters]

### Common-sense reasoning

[table: common_sense]

### Bias by category

[table: bias]

### Grouped and safety results

[table: grouped]

[table: safety]

## Ethical considerations

**Data.** The training text comes from the web and from other public collections. It
contains offensive, harmful and biased content, and the model can reproduce it.

**Human life.** The model is not meant to inform decisions that matter to people's lives,
health or safety, and must not be used that way.

**Mitigations.** Web data was filtered by its closeness to Wikipedia text, using a
Kneser-Ney language model and a fastText linear classifier.

**Risks and harms.** Known risks of large language models include generating harmful,
offensive or biased text, and false statements stated with confidence. LLaMA {size} is
not an exception.

**Use cases.** It is a foundation model. Without further evaluation and mitigation of its
risks it should not be used in applications that reach people.
"""

SUMMARY = (
    "LLaMA {size} is a foundation language model with about {size} parameters, trained by "
    "Meta AI on publicly available text and released for noncommercial research. It is a "
    "base model: not tuned to follow instructions or to avoid harmful output, so it can "
    "write false, biased or offensive text. Read the card before you apply."
)


def _metadata(size):
    return [
        ["Organisation", "The FAIR team of Meta AI"],
        ["Model date", "Trained between December 2022 and February 2023"],
        ["Model version", "1"],
        ["Model type", f"Auto-regressive transformer language model, about {size} parameters"],
        ["Paper", "arXiv:2302.13971"],
        ["License", "Bespoke noncommercial license"],
        ["Questions", "The original LLaMA repository's issue tracker"],
    ]


DEMO_SUMMARY = (
    "A tiny model in the LLaMA architecture and checkpoint format, trained by this project in "
    "seconds on text shipped with the portal. It exists to try the portal end to end; it is "
    "not a research model and has no benchmark results."
)

DEMO_BODY = """\
## What it is

The demo size is not part of the LLaMA release. It is a very small model, over a thousand
times smaller than LLaMA 7B, in the same architecture and checkpoint layout (params.json,
consolidated shards, a SentencePiece tokenizer and checklist.chk). This project trains its
tokenizer and its weights, for a few hundred steps, on about 18 KB of English prose that
ships with the portal; the build is deterministic for a seed.

## Intended use

Trying the portal from end to end before or while applying for a research size:
downloading and verifying files, the download script, the Python client, the API,
generation and scoring jobs. Access is granted automatically when an application raises
no flag.

## Out-of-scope use

Everything else. Its text is barely English and it knows nothing about the world. It was
not evaluated on any benchmark and has no published figures: do not report results
obtained with it as results of a LLaMA model.

## Training data

Only the short text bundled with the portal: no web data and no personal data.

## Ethical considerations

It is too small to be useful for harm, and too small to be useful for research on the
harms of language models. Use the released sizes for that.
"""


def _sha256(summary, metadata, body, tables):
    canonical = json.dumps(
        {"summary": summary, "metadata": metadata, "body": body, "tables": tables},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def seed_cards(apps, schema_editor):
    ModelVariant = apps.get_model("catalog", "ModelVariant")
    ModelCardVersion = apps.get_model("catalog", "ModelCardVersion")
    cards = {
        size.lower(): (SUMMARY.format(size=size), _metadata(size), BODY.format(size=size), TABLES)
        for size in SIZES
    }
    cards["demo"] = (
        DEMO_SUMMARY,
        [
            ["Organisation", "This portal's team"],
            ["Model type", "Auto-regressive transformer language model (LLaMA architecture)"],
            ["Purpose", "Trying the portal; not a research model"],
            ["License", "The portal's license for the demo size"],
        ],
        DEMO_BODY,
        [],
    )
    now = timezone.now()
    for variant in ModelVariant.objects.filter(slug__in=cards):
        if ModelCardVersion.objects.filter(variant=variant).exists():
            continue
        summary, metadata, body, tables = cards[variant.slug]
        ModelCardVersion.objects.create(
            variant=variant,
            version=1,
            summary=summary,
            metadata=metadata,
            body=body,
            tables=tables,
            change_note="First version, written for the portal from the release's card.",
            sha256=_sha256(summary, metadata, body, tables),
            created_at=now,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_audit_keyed_chain"),
        ("catalog", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="ModelCardVersion",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("version", models.PositiveIntegerField()),
                (
                    "summary",
                    models.TextField(help_text="One paragraph of plain text, shown in the catalog"),
                ),
                ("metadata", models.JSONField(blank=True, default=list)),
                (
                    "body",
                    models.TextField(
                        help_text="Markdown; `[table: KEY]` on its own line places a table"
                    ),
                ),
                ("tables", models.JSONField(blank=True, default=list)),
                ("change_note", models.CharField(blank=True, max_length=300)),
                ("author_ref", models.CharField(blank=True, max_length=300)),
                (
                    "sha256",
                    models.CharField(help_text="SHA-256 of the version's content", max_length=64),
                ),
                ("created_at", models.DateTimeField()),
                (
                    "variant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="card_versions",
                        to="catalog.modelvariant",
                    ),
                ),
            ],
            options={
                "ordering": ["variant", "-version"],
            },
        ),
        migrations.CreateModel(
            name="CardVersionSeen",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("seen_at", models.DateTimeField()),
                (
                    "application",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="card_versions_seen",
                        to="accounts.application",
                    ),
                ),
                (
                    "card_version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="seen_by",
                        to="catalog.modelcardversion",
                    ),
                ),
            ],
            options={
                "ordering": ["application", "seen_at"],
            },
        ),
        migrations.AddConstraint(
            model_name="modelcardversion",
            constraint=models.UniqueConstraint(
                fields=("variant", "version"), name="card_version_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="cardversionseen",
            constraint=models.UniqueConstraint(
                fields=("application", "card_version"), name="card_version_seen_once"
            ),
        ),
        migrations.RunPython(seed_cards, migrations.RunPython.noop),
    ]
