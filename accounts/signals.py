"""Signals other apps listen to. They carry news; the rules live in services."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after the transaction that revoked a grant commits: `sender=Grant, grant=<Grant>`.
# The jobs app cancels the user's queued and running jobs for that size.
grant_revoked = Signal()

# Sent inside the submitting transaction: `sender=Application, application=<Application>`.
# A receiver returns a list of flag codes (empty when clean). Any flag stops automatic
# approval, so the application waits for a reviewer. The review console computes its flags here.
application_submitted = Signal()
