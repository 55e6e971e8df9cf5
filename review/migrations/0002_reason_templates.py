"""Stock reasons a reviewer starts from. Reviewers edit the text before it is sent;
an administrator can add or retire templates in the admin."""

from django.db import migrations

TEMPLATES = [
    # kind, position, title, text
    (
        "reject",
        10,
        "Not research use",
        "The use you describe is not noncommercial research as the license defines it. "
        "The weights are released only for research by academic, government, civil-society "
        "and industry research groups.",
    ),
    (
        "reject",
        20,
        "Affiliation not verifiable",
        "We could not verify your affiliation with a research organization. Apply again "
        "with your institutional email address, or give an institutional web page that "
        "names you.",
    ),
    (
        "reject",
        30,
        "Size not justified",
        "Your research as described does not need this model size. The smaller sizes you "
        "were approved for (or may apply for) should serve it; apply again if your work "
        "later shows it needs the larger model.",
    ),
    (
        "reject",
        40,
        "Duplicate application",
        "This application repeats another one already under review or decided. Please "
        "continue with that application instead.",
    ),
    (
        "return",
        10,
        "Describe the research in more detail",
        "Please describe your intended research in more detail: the question you study, "
        "how you will use the model, and how you will publish your results.",
    ),
    (
        "return",
        20,
        "Use an institutional email address",
        "Please apply with the email address of your institution, or give an institutional "
        "web page that lists you, so that we can verify your affiliation.",
    ),
    (
        "return",
        30,
        "Supervisor missing",
        "Students apply together with a supervisor: please give your supervisor's name and "
        "institutional email address.",
    ),
    (
        "revoke",
        10,
        "Redistribution of the weights",
        "The weights were shared with people who are not covered by your grant, which the "
        "license forbids.",
    ),
    (
        "revoke",
        20,
        "Commercial use",
        "The weights were used for a commercial purpose, which the license forbids.",
    ),
    (
        "revoke",
        30,
        "Left the institution",
        "You have left the institution your access was granted through. Apply again from "
        "your new institution if you continue this research.",
    ),
]


def forwards(apps, schema_editor):
    ReasonTemplate = apps.get_model("review", "ReasonTemplate")
    for kind, position, title, text in TEMPLATES:
        ReasonTemplate.objects.update_or_create(
            kind=kind, title=title, defaults={"text": text, "position": position}
        )


def backwards(apps, schema_editor):
    ReasonTemplate = apps.get_model("review", "ReasonTemplate")
    for kind, _position, title, _text in TEMPLATES:
        ReasonTemplate.objects.filter(kind=kind, title=title).delete()


class Migration(migrations.Migration):
    dependencies = [("review", "0001_initial")]

    operations = [migrations.RunPython(forwards, backwards)]
