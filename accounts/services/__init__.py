"""Every write of the access domain, one module per aggregate (as pretix splits its services):

- `audit`: the hash-chained, anchored audit log every other module appends to;
- `transitions`: the moves of the three state machines (applications, size decisions,
  grants), each checked against its table in `accounts.models`;
- `applications`: the applicant's side (start, draft, submit, resubmit, withdraw);
- `decisions`: the reviewer's side (return, approve, reject, per size);
- `grants`: access to a size until a date (create, revoke, expire, notify);
- `licenses`: license versions and acceptances;
- `tokens`: personal access tokens;
- `users`: accounts as a whole.

Each state change follows one pattern: lock the row, check the move against its table,
change it, write an event row and an audit entry, and queue side effects (email, signals)
for after the commit. The public names are importable from `accounts.services` as before.
"""

from accounts.services.applications import (
    APPLICANT_FIELDS,
    application_problems,
    application_resubmit,
    application_save_draft,
    application_start,
    application_submit,
    application_withdraw,
    use_case_min_chars,
)
from accounts.services.audit import audit_anchor_read, audit_anchor_write, audit_record
from accounts.services.decisions import application_approve, application_reject, application_return
from accounts.services.grants import (
    grant_create,
    grant_expire_due,
    grant_notify_expiring,
    grant_revoke,
)
from accounts.services.licenses import (
    license_accept,
    license_publish_version,
    license_text_sha256,
    user_full_name,
)
from accounts.services.tokens import (
    TOKEN_MAX_DAYS,
    TOKEN_MAX_PER_USER,
    token_create,
    token_find,
    token_hash,
    token_revoke,
    token_revoke_all,
    token_touch,
)
from accounts.services.transitions import InvalidTransition
from accounts.services.users import user_deactivate

__all__ = [
    "APPLICANT_FIELDS",
    "TOKEN_MAX_DAYS",
    "TOKEN_MAX_PER_USER",
    "InvalidTransition",
    "application_approve",
    "application_problems",
    "application_reject",
    "application_resubmit",
    "application_return",
    "application_save_draft",
    "application_start",
    "application_submit",
    "application_withdraw",
    "audit_anchor_read",
    "audit_anchor_write",
    "audit_record",
    "grant_create",
    "grant_expire_due",
    "grant_notify_expiring",
    "grant_revoke",
    "license_accept",
    "license_publish_version",
    "license_text_sha256",
    "token_create",
    "token_find",
    "token_hash",
    "token_revoke",
    "token_revoke_all",
    "token_touch",
    "use_case_min_chars",
    "user_deactivate",
    "user_full_name",
]
