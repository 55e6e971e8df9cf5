"""Client for the LLaMA research access portal."""

from portal_client.client import Client, DownloadReport, PortalClientError

__all__ = ["Client", "DownloadReport", "PortalClientError"]
__version__ = "0.1.0"
