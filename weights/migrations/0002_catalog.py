"""The LLaMA catalog: the four released sizes and the tiny demo size.

params.json values are the original release's (vocab_size -1: taken from the tokenizer).
Nothing here says the weights are stored: `publish_weights` does that.
"""

from django.db import migrations

_COMMON = {"multiple_of": 256, "norm_eps": 1e-06, "vocab_size": -1}
CATALOG = [
    # slug, size, dim, n_heads, n_layers, shards, policy, position
    ("7b", "7B", 4096, 32, 32, 1, "manual", 10),
    ("13b", "13B", 5120, 40, 40, 2, "manual", 20),
    ("33b", "33B", 6656, 52, 60, 4, "two_reviewers", 30),
    ("65b", "65B", 8192, 64, 80, 8, "two_reviewers", 40),
]
CARD = (
    "LLaMA {size} is a foundational large language model with about {size} parameters, "
    "trained on publicly available data. It is released for noncommercial research "
    "under the LLaMA research license. It is a base model: it has not been tuned to follow "
    "instructions or to avoid harmful output, and it can produce false, biased or offensive "
    "text. Evaluate it for your use case before you rely on it."
)


def forwards(apps, schema_editor):
    ModelVariant = apps.get_model("weights", "ModelVariant")
    for slug, size, dim, heads, layers, shards, policy, position in CATALOG:
        ModelVariant.objects.update_or_create(
            slug=slug,
            defaults=dict(
                family="LLaMA",
                size=size,
                params={"dim": dim, "n_heads": heads, "n_layers": layers, **_COMMON},
                shard_count=shards,
                context_length=2048,
                model_card=CARD.format(size=size),
                access_policy=policy,
                grant_days=365,
                is_published=True,
                position=position,
            ),
        )
    ModelVariant.objects.update_or_create(
        slug="demo",
        defaults=dict(
            family="LLaMA",
            size="demo",
            # The demo checkpoint's own params.json replaces this when it is published.
            params={"dim": 64, "n_heads": 4, "n_layers": 2, **_COMMON},
            shard_count=1,
            context_length=256,
            model_card=(
                "A tiny model in the LLaMA architecture and checkpoint format, trained in "
                "seconds on text shipped with the portal. It exists to try the portal end to "
                "end: downloads, the API and generation jobs. Its text is barely English."
            ),
            access_policy="automatic",
            grant_days=90,
            is_published=True,
            position=0,
        ),
    )


def backwards(apps, schema_editor):
    apps.get_model("weights", "ModelVariant").objects.filter(
        slug__in=["demo"] + [row[0] for row in CATALOG]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("weights", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
