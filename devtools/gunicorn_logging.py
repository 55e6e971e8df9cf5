"""gunicorn's logger with the portal's log redaction.

    gunicorn --logger-class devtools.gunicorn_logging.RedactingLogger ...

gunicorn's access lines carry the request line and the Referer, query strings included:
a download link's `X-Amz-Signature` or a `?token=llp_...` would be printed whole. Its
loggers do not propagate to Django's, so they get the same filter here.
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from core.logging import RedactSecretsFilter


class RedactingLogger(Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.access_log, self.error_log):
            if not any(isinstance(f, RedactSecretsFilter) for f in log.filters):
                log.addFilter(RedactSecretsFilter())
