"""`portal-client`: the portal from the command line.

    portal-client download 7B --dir ./llama-7B

PORTAL_URL and PORTAL_TOKEN (a personal access token) come from the environment or from
--url / --token. Other modules add subcommands with a `register(subparsers)` function
listed in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from portal_client.client import Client, PortalClientError
from portal_client.transfer import human, redact

COMMAND_MODULES = ["portal_client.jobs_cli"]


def _client(args: argparse.Namespace, **kwargs) -> Client:
    if not args.url:
        raise PortalClientError("Give the portal's address with --url or PORTAL_URL.")
    return Client(args.url, args.token, **kwargs)


def _download(args: argparse.Namespace) -> int:
    client = _client(args, workers=args.workers, progress=not args.quiet)
    directory = args.dir or f"./llama-{args.size.lower()}"
    report = client.download(args.size, directory)
    print(
        f"LLaMA {args.size}: {len(report.downloaded)} file(s) downloaded "
        f"({human(report.bytes_fetched)}), {len(report.already_present)} already present; "
        f"all verified in {report.directory}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portal-client", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("PORTAL_URL", ""), help="portal address")
    parser.add_argument(
        "--token", default=os.environ.get("PORTAL_TOKEN", ""), help="personal access token"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="download a model size's files, verified")
    download.add_argument("size", help="model size: demo, 7B, 13B, 33B, 65B")
    download.add_argument("--dir", help="target folder (default ./llama-<size>)")
    download.add_argument(
        "--workers", type=int, default=None, help="parallel ranged requests (default 2 to 4)"
    )
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(func=_download)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(commands)
    return parser


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PortalClientError as exc:
        print(f"error: {redact(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
