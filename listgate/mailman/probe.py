"""A first look at Mailman core's REST API, for a postmaster setting listgate up: does it
answer, and if not, exactly why.

The daemon never uses this module: its REST client (the Mailman backend's) folds every
failure into ``BackendUnavailable``, because at RCPT time only "Mailman cannot answer"
matters. Setting up, the reason is what matters, so these two requests are made with
httpx directly (with the daemon's timeout per request) and a failure is named.

Invariants:
- ``probe_rest`` makes ``GET {url}/system/versions`` and then ``GET {url}/lists``, with
  HTTP basic auth, each bounded by ``timeout`` as a whole. Nothing is written to Mailman.
- Every failure is one ``BackendUnavailable`` whose message is one line that names what
  failed (refused, unknown host, TLS, timeout, not HTTP, 401, 404, another status, not
  Mailman) and what to check in Mailman's ``[webservice]``; it never carries the password.
- Besides the Mailman backend's REST client, the only module that knows httpx and HTTP
  status codes; it imports nothing of listgate but its errors.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from listgate.errors import BackendUnavailable

__all__ = ["RestProbe", "probe_rest"]


@dataclass(frozen=True, slots=True)
class RestProbe:
    """What a working REST API said about itself."""

    url: str
    mailman_version: str
    """e.g. "GNU Mailman 3.3.10 (Tom Sawyer)"."""
    api_version: str
    """The API version the server reports for this URL, e.g. "3.1"."""
    lists: tuple[str, ...]
    """Every list's posting address, sorted."""


_STATUS_HINTS = {
    401: "401 Unauthorized: the user or password is wrong (Mailman's [webservice] "
         "admin_user and admin_pass)",
    403: "403 Forbidden: the user or password is wrong (Mailman's [webservice] "
         "admin_user and admin_pass)",
    404: "404 Not Found for {path}: no REST API {api} here (wrong API version, an older "
         "Mailman core, or another web server on this port: check [webservice] port)",
}


def _root_error(exc: BaseException) -> BaseException:
    """The innermost cause (httpx wraps httpcore, which wraps the OSError)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _transport_problem(exc: httpx.TransportError, host: str, port: int, timeout: float) -> str:
    """One line for a failure below HTTP."""
    where = f"{host}:{port}"
    root = _root_error(exc)
    if isinstance(exc, httpx.TimeoutException):
        return (f"no answer from {where} within {timeout:g} s (a firewall, a stuck Mailman, "
                "or the wrong host)")
    if isinstance(root, ssl.SSLCertVerificationError):
        return (f"TLS certificate of {where} not accepted: {root.verify_message} "
                "(use_https = yes needs a certificate this host trusts)")
    if isinstance(root, ssl.SSLError):
        reason = root.reason or type(root).__name__
        return (f"TLS handshake with {where} failed ({reason}): is it serving plain HTTP? "
                "Check Mailman's [webservice] use_https")
    if isinstance(root, ConnectionRefusedError):
        return (f"connection refused by {where}: is Mailman core running, and is "
                "[webservice] hostname/port right?")
    if isinstance(root, socket.gaierror):
        return f"cannot resolve host {host!r} ({root.strerror}): check [webservice] hostname"
    if isinstance(exc, httpx.ConnectError):
        detail = root.strerror if isinstance(root, OSError) and root.strerror else root
        return f"cannot connect to {where}: {detail}"
    # Connected, but what came back (or did not) is not HTTP.
    detail = str(exc) or (root.strerror if isinstance(root, OSError) else "") or type(
        root).__name__
    return (f"{where} gave no HTTP answer ({detail.rstrip('.')}): not Mailman's REST port, "
            "or it expects TLS (Mailman's [webservice] use_https)")


def _problem_for_status(response: httpx.Response, url: str, path: str) -> str | None:
    status = response.status_code
    if status == 200:
        return None
    api = urlsplit(url).path.strip("/").rpartition("/")[2] or "version"
    hint = _STATUS_HINTS.get(status, f"HTTP {status} {response.reason_phrase}")
    return f"{url} answered {hint.format(path=path, api=api)}"


async def _get(http: httpx.AsyncClient, url: str, what: str, timeout: float) -> object:
    """GET ``{url}/{what}``: its JSON, or ``BackendUnavailable`` saying why not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = f"{parts.path.rstrip('/')}/{what}"
    try:
        async with asyncio.timeout(timeout):
            response = await http.get(f"{url.rstrip('/')}/{what}")
    except TimeoutError:
        raise BackendUnavailable(f"no answer from {host}:{port} within {timeout:g} s") from None
    except httpx.TransportError as exc:
        raise BackendUnavailable(_transport_problem(exc, host, port, timeout)) from None
    problem = _problem_for_status(response, url, path)
    if problem is not None:
        raise BackendUnavailable(problem)
    try:
        return response.json()
    except ValueError:
        raise BackendUnavailable(f"{url} answered {path} with something that is not JSON: "
                                 "not Mailman core's REST API (check [webservice] port)"
                                 ) from None


async def probe_rest(url: str, user: str, password: str, *, timeout: float = 5.0) -> RestProbe:
    """Ask *url* for its versions, then for its lists; ``BackendUnavailable`` says why not."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), auth=(user, password)) as http:
        versions = await _get(http, url, "system/versions", timeout)
        if not isinstance(versions, dict) or "mailman_version" not in versions:
            raise BackendUnavailable(
                f"{url} answered 200 but not as Mailman core's REST API (no mailman_version "
                "in system/versions): check [webservice] port")
        lists = await _get(http, url, "lists", timeout)
    entries = lists.get("entries", []) if isinstance(lists, dict) else []
    addresses = sorted(str(e.get("fqdn_listname", "")).lower() for e in entries
                       if isinstance(e, dict) and e.get("fqdn_listname"))
    return RestProbe(url, str(versions["mailman_version"]),
                     str(versions.get("api_version", "")), tuple(addresses))
