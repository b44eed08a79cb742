"""The local backend's console pages (``GET /console/...``), the target of ``get_console_url``.

`tinkex_jax.console_urls` points the SDK's console links for a non-hosted server at
``<base_url>/console/<page>``; these are the pages the local backend answers there, as small
HTML documents that need no key:

- ``sessions``, ``sessions/<id>``, ``training_runs/<id>``, ``checkpoints/<run>/<kind>/<name>``,
  ``playground?checkpoint=<tinker path>``;
- on an open server (no ``--api-key``, no JWT auth: any ``tml-`` key reads everything
  anyway) the page shows what the REST API answers about the resource;
- otherwise it shows only how to look the resource up with your key (a ``tinkex`` command and
  the REST path), so the pages reveal nothing a caller without the key could not see.

Example:
    >>> status, html = render("training_runs/r1", {}, lookup=None)
    >>> status, "tinkex run info r1" in html
    (200, True)
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from ._errors import ServerError

__all__ = ["render"]

#: Answers a REST question (``("get_session", id)`` ...) with its JSON, or raises.
Lookup = Callable[[str, tuple[str, ...]], Any]


def _page(title: str, body: str) -> str:
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)} - tinkex local backend</title></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}"
            "<p><small>tinkex local backend console</small></p></body></html>")


def _pre(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, sort_keys=True))}</pre>"


def _how(command: str | None, rest: str) -> str:
    parts = []
    if command:
        parts.append(f"<p>With your key: <code>{html.escape(command)}</code></p>")
    parts.append(f"<p>REST: <code>GET /api/v1/{html.escape(rest)}</code> with the "
                 "<code>X-API-Key</code> header.</p>")
    return "".join(parts)


def render(path: str, query: Mapping[str, str], *, lookup: Lookup | None
           ) -> tuple[int, str]:
    """The status and HTML of the console page at `path` (below ``/console/``).

    `lookup` answers REST questions on an open server; None means "show how, not what".
    """
    parts = [p for p in path.strip("/").split("/") if p]
    try:
        return _render(parts, query, lookup)
    except ServerError as exc:
        return exc.status, _page("Not found" if exc.status == 404 else "Error",
                                 f"<p>{html.escape(str(exc))}</p>")


def _render(parts: list[str], query: Mapping[str, str], lookup: Lookup | None
            ) -> tuple[int, str]:
    if not parts or parts == ["sessions"]:
        body = _how(None, "sessions")
        if lookup is not None:
            body = _pre(lookup("list_sessions", ())) + body
        return 200, _page("Sessions", body)
    if parts[0] == "sessions" and len(parts) == 2:
        session_id = parts[1]
        body = _how(None, f"sessions/{quote(session_id, safe=':')}")
        if lookup is not None:
            body = _pre(lookup("get_session", (session_id,))) + body
        return 200, _page(f"Session {session_id}", body)
    if parts[0] == "training_runs" and len(parts) == 2:
        run_id = parts[1]
        body = _how(f"tinkex run info {run_id}", f"training_runs/{quote(run_id, safe=':')}")
        if lookup is not None:
            body = _pre(lookup("get_training_run", (run_id,))) + body
        return 200, _page(f"Training run {run_id}", body)
    if parts[0] == "checkpoints" and len(parts) == 4:
        run_id, checkpoint_id = parts[1], f"{parts[2]}/{parts[3]}"
        path = f"tinker://{run_id}/{checkpoint_id}"
        body = _how(f"tinkex checkpoint info {path}",
                    f"training_runs/{quote(run_id, safe=':')}/checkpoints")
        if lookup is not None:
            body = _pre(lookup("get_checkpoint", (run_id, checkpoint_id))) + body
        return 200, _page(f"Checkpoint {path}", body)
    if parts == ["playground"]:
        checkpoint = query.get("checkpoint", "")
        if not checkpoint:
            return 400, _page("Playground", "<p>Add <code>?checkpoint=tinker://...</code> "
                                            "(sampler weights) to the URL.</p>")
        body = (f"<p>Sample from it: <code>tinkex sample --model-path "
                f"{html.escape(checkpoint)} \"your prompt\"</code>, or "
                "<code>ServiceClient.create_sampling_client(model_path=...)</code>.</p>")
        return 200, _page(f"Playground: {checkpoint}", body)
    return 404, _page("Not found", f"<p>No console page {html.escape('/'.join(parts))!s}. "
                                   "Pages: sessions, sessions/&lt;id&gt;, "
                                   "training_runs/&lt;id&gt;, "
                                   "checkpoints/&lt;run&gt;/&lt;kind&gt;/&lt;name&gt;, "
                                   "playground?checkpoint=&lt;path&gt;.</p>")
