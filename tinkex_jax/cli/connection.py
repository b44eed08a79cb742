"""A ``tinkex`` command's link to the server: the `ServiceClient` built from the command line,
a fast reachability check, and paging through list endpoints.

For: opening and closing the client a command uses, failing in seconds (not after minutes of
SDK retries) when nothing answers, and collecting pages. Not for: printing, wording of
results, or reading files; the SDK and httpx are imported inside the functions.

Example:
    >>> data = list(range(7))
    >>> collect_pages(lambda off, n: (data[off:off + n], len(data)), 5, page_size=2)
    ([0, 1, 2, 3, 4], 7)
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from .credentials import find_credential, require_usable
from .errors import EXIT_USAGE, CLIError, cli_message

if TYPE_CHECKING:
    from ..clients import ServiceClient

__all__ = ["collect_pages", "connect", "probe"]

T = TypeVar("T")


def probe(base_url: str) -> None:
    """Fail fast when nothing answers at `base_url` (the SDK would retry for minutes)."""
    import httpx

    try:
        httpx.get(base_url.rstrip("/") + "/api/v1/healthz", timeout=10.0)
    except httpx.TransportError as exc:
        raise CLIError(f"cannot reach the Tinker server at {base_url} ({type(exc).__name__}). "
                       "Fix: check --base-url / TINKER_BASE_URL, or start a local backend "
                       "with `tinkex serve`.") from None


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[ServiceClient]:
    """A ServiceClient from ``--base-url`` / ``--api-key`` (else the environment and the
    stored key), closed at the end; raises `CLIError` when there is no usable key or
    nothing answers."""
    from ..clients import ServiceClient
    from ..errors import TinkerError

    found = find_credential(args.api_key, args.base_url)
    require_usable(found)
    try:
        service = ServiceClient(base_url=found.base_url, api_key=args.api_key)
    except TinkerError as exc:
        message, _ = cli_message(exc, getattr(args, "_prog", "tinkex"))
        raise CLIError(message, exit_code=EXIT_USAGE) from None
    try:
        probe(service.base_url)
        yield service
    finally:
        with contextlib.suppress(Exception):
            service.close().result(timeout=30)


def collect_pages(fetch: Callable[[int, int], tuple[list[T], int | None]], limit: int,
                  page_size: int = 100) -> tuple[list[T], int | None]:
    """Fetch pages ``fetch(offset, n) -> (items, total_count)`` until `limit` items (0: all)
    or the end; returns the items and the server's total (None if it gave none).

    Example:
        >>> data = list(range(7))
        >>> collect_pages(lambda off, n: (data[off:off + n], None), 0, page_size=3)[0]
        [0, 1, 2, 3, 4, 5, 6]
    """
    items: list[T] = []
    total: int | None = None
    while limit == 0 or len(items) < limit:
        want = page_size if limit == 0 else min(page_size, limit - len(items))
        page, total = fetch(len(items), want)
        items.extend(page)
        if len(page) < want or (total is not None and len(items) >= total):
            break
    return items, total
