"""The LLaMA noncommercial research license (version 1) and the reviewers group."""

import hashlib

from django.db import migrations
from django.utils import timezone

SLUG = "llama-noncommercial"
TITLE = "LLaMA Noncommercial Research License"
TEXT = """LLaMA NONCOMMERCIAL RESEARCH LICENSE, VERSION 1

1. Who may use the model. This license is granted to you personally, as a researcher
approved by the portal's reviewers, for the model sizes named in your grant and for as
long as your grant is active. It is not transferable. You may let members of your own
research group use the model under your supervision only if each of them has agreed to
these terms.

2. What you may do. You may download, copy, run, evaluate, fine-tune and modify the model
weights and the code that comes with them, solely for noncommercial research: scientific
research, evaluation, teaching and the publication of results.

3. What you may not do. You may not:
   (a) use the model, its outputs or any model derived from it for a commercial purpose,
       including offering it as a product or a service, or to train a commercial model;
   (b) share, publish or redistribute the weights, or weights derived from them, with
       anyone who has not been granted access through this portal;
   (c) use the model in violation of applicable law, or to build systems meant to deceive,
       harass, surveil or discriminate against people, to produce disinformation, or to
       cause harm to people;
   (d) try to identify individuals from the model's training data.

4. Your obligations. You will keep the weights secure, with access limited to your own
systems and the people allowed by section 1. You will cite the LLaMA paper in work that
uses the model, and report to the portal any security incident that exposes the weights.

5. Publication. You may publish research results, including the model's outputs used as
examples, provided that the publication does not contain the weights.

6. No warranty. The model is provided "as is", without warranty of any kind. It can
produce text that is false, biased or offensive. You are responsible for how you use it
and for evaluating it before you rely on it. The licensor is not liable for any damage
arising from its use, to the extent the law allows.

7. Termination. This license ends when your grant expires or is revoked, or at once if you
breach it. When it ends you will stop using the model and delete every copy of the
weights and of weights derived from them.

8. Changes. The licensor may publish a new version of this license. Continued use of the
model after a new version takes effect requires that you accept it on the portal.
"""


def forwards(apps, schema_editor):
    License = apps.get_model("accounts", "License")
    LicenseVersion = apps.get_model("accounts", "LicenseVersion")
    Group = apps.get_model("auth", "Group")
    license, _ = License.objects.get_or_create(slug=SLUG, defaults={"title": TITLE})
    LicenseVersion.objects.get_or_create(
        license=license,
        version=1,
        defaults={
            "title": TITLE,
            "text": TEXT,
            "sha256": hashlib.sha256(TEXT.encode("utf-8")).hexdigest(),
            "effective_at": timezone.now(),
        },
    )
    Group.objects.get_or_create(name="reviewers")


def backwards(apps, schema_editor):
    License = apps.get_model("accounts", "License")
    LicenseVersion = apps.get_model("accounts", "LicenseVersion")
    LicenseVersion.objects.filter(license__slug=SLUG, version=1, acceptances__isnull=True).delete()
    License.objects.filter(slug=SLUG, versions__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_access_domain"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
