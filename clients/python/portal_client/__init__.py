"""Client for the LLaMA research access portal."""

from portal_client.client import Client, DownloadReport, PortalClientError
from portal_client.jobs import (
    AuthenticationFailed,
    BadParameters,
    Generation,
    JobCancelled,
    JobFailed,
    JobNotFound,
    LicensePending,
    NoAccess,
    Piece,
    QuotaExceeded,
)
from portal_client.scoring import Score

__all__ = [
    "AuthenticationFailed",
    "BadParameters",
    "Client",
    "DownloadReport",
    "Generation",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "LicensePending",
    "NoAccess",
    "Piece",
    "PortalClientError",
    "QuotaExceeded",
    "Score",
]
__version__ = "0.1.0"
