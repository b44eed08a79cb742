"""Links to a server's console pages for sessions, training runs and checkpoints.

`ServiceClient.get_console_url` and `TrainingClient.get_console_url` build these from the
client's base URL; the functions here take it as ``base_url=`` (default: ``TINKER_BASE_URL``,
else the hosted service), so they also work on a bare path or id. Where the console is:

- the hosted service (a ``thinkingmachines`` host): its web console,
  ``https://tinker.thinkingmachines.ai``, with the same page paths as the official SDK;
- any other server: ``<base_url>/console``. The local backend (`tinkex serve`) answers there
  with a page per resource: what the REST API says about it when the server is open (no
  ``--api-key``, no JWT auth), else how to look it up with your key (the ``tinkex`` command
  line or the REST path). Other servers may not serve these pages.

Nothing here makes a request.

Example:
    >>> training_run_console_url("sess:train:0", base_url="http://127.0.0.1:8000")
    'http://127.0.0.1:8000/console/training_runs/sess%3Atrain%3A0'
    >>> session_console_url("s-1", base_url="https://tinker.thinkingmachines.dev/services/tinker-prod")
    'https://tinker.thinkingmachines.ai/sessions/s-1'
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlencode, urlsplit

__all__ = [
    "HOSTED_CONSOLE_URL",
    "checkpoint_console_url",
    "checkpoint_playground_url",
    "console_base_url",
    "session_console_url",
    "sessions_console_url",
    "training_run_console_url",
]

#: The hosted service's web console.
HOSTED_CONSOLE_URL = "https://tinker.thinkingmachines.ai"
_HOSTED_DOMAINS = ("thinkingmachines.dev", "thinkingmachines.ai")
_DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"


def console_base_url(base_url: str | None = None) -> str:
    """The console root for the server at `base_url` (see the module docstring).

    Example:
        >>> console_base_url("http://127.0.0.1:8000/")
        'http://127.0.0.1:8000/console'
        >>> console_base_url("https://tinker.thinkingmachines.dev/services/tinker-prod")
        'https://tinker.thinkingmachines.ai'
    """
    url = base_url or os.environ.get("TINKER_BASE_URL") or _DEFAULT_BASE_URL
    host = (urlsplit(url).hostname or "").lower()
    if any(host == d or host.endswith("." + d) for d in _HOSTED_DOMAINS):
        return HOSTED_CONSOLE_URL
    return url.rstrip("/") + "/console"


def _segment(value: str) -> str:
    return quote(value, safe="")


def sessions_console_url(*, base_url: str | None = None) -> str:
    """The page listing your sessions."""
    return f"{console_base_url(base_url)}/sessions"


def session_console_url(session_id: str, *, base_url: str | None = None) -> str:
    """The page of one session."""
    return f"{console_base_url(base_url)}/sessions/{_segment(session_id)}"


def training_run_console_url(training_run_id: str, *, base_url: str | None = None) -> str:
    """The page of one training run (its id is the training client's ``model_id``)."""
    return f"{console_base_url(base_url)}/training_runs/{_segment(training_run_id)}"


def checkpoint_console_url(training_run_id: str, checkpoint_id: str, *,
                           base_url: str | None = None) -> str:
    """The page of one checkpoint (`checkpoint_id` is kind-qualified, e.g. ``weights/s1``).

    Example:
        >>> checkpoint_console_url("r", "weights/s1", base_url="http://h:1")
        'http://h:1/console/checkpoints/r/weights%2Fs1'
    """
    return (f"{console_base_url(base_url)}/checkpoints/{_segment(training_run_id)}/"
            f"{_segment(checkpoint_id)}")


def checkpoint_playground_url(tinker_path: str, *, base_url: str | None = None) -> str:
    """The page for trying out a checkpoint's sampler weights."""
    query = urlencode({"mode": "checkpoint", "checkpoint": tinker_path})
    return f"{console_base_url(base_url)}/playground?{query}"
