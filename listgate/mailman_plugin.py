"""A GNU Mailman 3 core plugin that tells listgate what changed, within milliseconds of
each commit, so listgate drops exactly the cached facts that went stale.

Enable it in ``mailman.cfg`` (after ``pip install listgate`` into Mailman's venv)::

    [plugin.listgate]
    class: listgate.mailman_plugin.ListgatePlugin
    enabled: yes
    configuration: /etc/listgate/mailman-plugin.cfg

and in that file::

    [listgate]
    notify: http://127.0.0.1:8891/      # one or more listgate listeners, space-separated
    secret_file: /etc/listgate/events-secret
    # heartbeat: 30   # seconds without a message before a heartbeat is sent; 0 = none
    # timeout: 2      # seconds per HTTP request (or Redis call)
    # redis_password_file: /etc/listgate/redis-password   # for redis:// notify URLs

``notify`` may also name the Redis of listgate's shared cache tier (``redis://HOST:PORT/DB``,
``rediss://...``, ``unix:///PATH?db=N``): the plugin then deletes the changed facts there
and publishes the invalidation on ``listgate:v1:invalidate``, which every listgate host
using that Redis follows; no listener and no ``secret_file`` is needed for such a URL.
The ``redis`` package must then be installed in Mailman's venv (it is imported only when
used; a missing one is logged).
    # queue_size: 1000

How it sees changes: SQLAlchemy session events on Mailman's session factory
(``config.db.sessionmaker``), registered in ``post_hook``: ``after_flush`` reads what the
flush wrote (new, changed and deleted rows, with attribute history) and collects the cache
keys it touches in ``session.info``; ``do_orm_execute`` catches the bulk DELETEs Mailman
issues for bans and acceptable aliases; ``after_commit`` hands the collected keys to the
sender; the end of the root transaction without a commit (rollback, close) drops them.
That covers every Mailman process that writes: the REST workers, the runners (command,
in, pipeline...), the ``mailman`` CLI. What it collects (``listgate.events.ChangeSet``):

- a membership (any role) added, removed, or its moderation_action/role/address changed:
  the address (all addresses of the user when subscribed as a user), except nonmember
  records without an action of their own, which decide nothing;
- an address linked to or unlinked from a user, verified, added or deleted: the address and
  every address of its old and new user; a user's preferred address: all its addresses;
- a ban added or removed: its list, or ``global_bans`` for a site-wide one;
- a list created or deleted: the list and the directory; a list setting changed (any column
  except post and digest counters): the list; renamed: also the directory;
- a domain created, deleted or changed (alias domain): the directory;
- an acceptable alias or header match of a list: the list.

Invariants:
- It never blocks, slows or breaks Mailman. Listeners only read what the flush already
  loaded or can load cheaply, and ``after_commit`` only puts onto a bounded queue
  (``put_nowait``; when full, the change is dropped and counted, and the next message says
  ``all``). Every listener catches every exception: one escaping ``after_flush`` would
  roll back the admin's change, one escaping ``after_commit`` would wedge a REST worker.
  A failed collection sends ``all`` instead.
- Network I/O happens only in one daemon thread per notify URL, started lazily per process
  (gunicorn forks the REST workers after the hooks ran, and threads do not survive a fork),
  with short timeouts; a listgate that is down, slow or refusing costs Mailman nothing.
  Failed deliveries are retried with backoff, merged with later changes (bounded: a change
  set too large becomes ``all``); a 4xx answer gives the message up.
- Short-lived processes (the CLI, one-shot runners) drain their queues at exit, for at most
  ``DRAIN_SECONDS`` in all.
- Errors go to Mailman's ``mailman.plugins`` log, at most one line per kind per
  ``LOG_INTERVAL`` seconds (with a count of the lines held back).
- Module level imports only the standard library, ``listgate.events`` and
  ``listgate.facts.sharedkeys`` (both stdlib-only): this module is imported inside
  Mailman's venv, where listgate's own dependencies may be missing (``redis`` is imported
  by the sender thread of a redis:// URL, when it first sends). Mailman and SQLAlchemy
  are imported inside functions.
"""

from __future__ import annotations

import atexit
import configparser
import contextlib
import http.client
import logging
import os
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from listgate import __version__
from listgate.events import (
    CONTENT_TYPE,
    EVERYTHING,
    NOTHING,
    SIGNATURE_HEADER,
    ChangeSet,
    EventError,
    Message,
    RateLimit,
    encode,
    read_secret,
    sign,
)
from listgate.facts.sharedkeys import CHANNEL, Invalidation, encode_invalidation, kind_pattern

__all__ = ["ListgatePlugin", "PluginSettings", "collect_flush", "parse_settings"]

log = logging.getLogger("mailman.plugins")

_HTTP = ("http", "https")
_REDIS = ("redis", "rediss", "unix")
"""notify URL schemes: a listgate events listener (HTTP), or Redis (the shared tier's
invalidation channel, ``listgate.facts.sharedkeys``)."""
_REDIS_KINDS = {"lists": ("policy",), "addresses": ("memberships", "linked"),
                "directory": ("directory",), "global_bans": ("global_bans",)}
"""Each part of a ``ChangeSet`` → the kinds of fact listgate's Mailman backend keeps for
it (its cache names; a unit test holds them equal)."""

SECTION = "listgate"
"""The section of the plugin's configuration file."""
DRAIN_SECONDS = 1.0
"""How long a Mailman process may wait at exit for its last changes to be delivered."""
LOG_INTERVAL = 60.0
"""Seconds between two log lines of the same kind."""
MAX_BACKOFF = 10.0
"""Seconds between delivery attempts to a listener that keeps failing, at most (and at
most the heartbeat interval)."""
_INFO_KEY = "listgate.changes"
"""Where a session keeps the changes collected since its transaction began."""

_MEMBER_KEYS = frozenset({"moderation_action", "role", "address_id", "_address", "user_id",
                          "_user", "list_id"})
_ADDRESS_KEYS = frozenset({"user_id", "user", "email", "_original", "_verified_on"})
_LIST_NOISE = frozenset({"last_post_at", "post_id", "next_request_id", "next_digest_number",
                         "digest_last_sent_at", "volume", "usenet_watermark"})
"""MailingList columns Mailman updates as mail flows; they decide no verdict."""
_LIST_DIRECTORY = frozenset({"list_name", "mail_host", "_list_id"})
_DOMAIN_KEYS = frozenset({"mail_host", "alias_domain"})


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """The plugin's configuration file, read."""

    notify: tuple[str, ...]
    secret: bytes
    heartbeat: float = 30.0
    timeout: float = 2.0
    queue_size: int = 1000
    redis_password: str = ""
    """For redis:// notify URLs: the password read from ``redis_password_file``."""

    def __repr__(self) -> str:  # never the secret
        return (f"PluginSettings(notify={self.notify!r}, heartbeat={self.heartbeat:g}, "
                f"timeout={self.timeout:g}, queue_size={self.queue_size})")


def _float(section: configparser.SectionProxy, key: str, default: float, low: float,
           high: float) -> float:
    text = section.get(key, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise EventError(f"[{SECTION}] {key}: not a number: {text!r}") from None
    if not low <= value <= high:
        raise EventError(f"[{SECTION}] {key}: must be from {low:g} to {high:g}, got {text}")
    return value


def parse_settings(parser: configparser.ConfigParser) -> PluginSettings:
    """Settings from the plugin's configuration file; ``EventError`` names what is wrong.
    Reads the secret file."""
    if not parser.has_section(SECTION):
        raise EventError(f"no [{SECTION}] section in the plugin configuration")
    section = parser[SECTION]
    urls = tuple(section.get("notify", "").split())
    if not urls:
        raise EventError(f"[{SECTION}] notify: name at least one listgate listener URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "unix" and parts.path.startswith("/"):
            continue
        if parts.scheme not in (*_HTTP, *_REDIS) or not parts.hostname:
            raise EventError(f"[{SECTION}] notify: {url.split('@')[-1]!r} is not an http://, "
                             "https://, redis://, rediss:// or unix:// URL")
        if parts.password is not None:
            raise EventError(f"[{SECTION}] notify: a Redis password goes in "
                             "redis_password_file, never in the URL")
        try:
            parts.port  # noqa: B018  (raises ValueError for a bad port)
        except ValueError:
            raise EventError(f"[{SECTION}] notify: {url!r} has a bad port") from None
    http = any(urlsplit(url).scheme in _HTTP for url in urls)
    secret_file = section.get("secret_file", "").strip()
    if http and not secret_file:
        raise EventError(f"[{SECTION}] secret_file: required (the file listgate's [events] "
                         "secret_file names)")
    password_file = section.get("redis_password_file", "").strip()
    password = read_secret(password_file).decode() if password_file else ""
    queue_text = section.get("queue_size", "").strip() or "1000"
    if not queue_text.isdigit() or not 1 <= int(queue_text) <= 1_000_000:
        raise EventError(f"[{SECTION}] queue_size: must be an integer from 1 to 1000000")
    return PluginSettings(
        notify=urls,
        secret=read_secret(secret_file) if secret_file else b"",
        heartbeat=_float(section, "heartbeat", 30.0, 0.0, 86400.0),
        timeout=_float(section, "timeout", 2.0, 0.05, 30.0),
        queue_size=int(queue_text),
        redis_password=password,
    )


# --------------------------------------------------------------------------- logging


class _Limited:
    """``RateLimit`` for the plugin's threads, logging to ``mailman.plugins``."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._lock = threading.Lock()
        self._limit = RateLimit(interval)

    def log(self, level: int, kind: str, text: str, *, exc_info: bool = False) -> None:
        with self._lock:
            held = self._limit.check(kind, time.monotonic())
        if held is None:
            return
        more = f" ({held} more like it since the last line)" if held else ""
        log.log(level, "listgate plugin: %s%s", text, more, exc_info=exc_info)


_limited = _Limited()


# --------------------------------------------------------------------------- sending


class _Target:
    """One notify URL: a bounded queue and the daemon thread that delivers it."""

    def __init__(self, url: str, settings: PluginSettings, stream: str, since: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self._redis = parts.scheme in _REDIS
        self._redis_client: Any = None
        self._host = parts.hostname or ""
        self._port = parts.port
        self._https = parts.scheme == "https"
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._settings = settings
        self._stream = stream
        self._since = since
        self._queue: queue.Queue[ChangeSet] = queue.Queue(settings.queue_size)
        self._cond = threading.Condition()
        self._overflow = False
        self.dropped = 0
        """Change sets dropped because the queue was full."""
        self._pending: ChangeSet | None = None
        """What the next message carries (NOTHING: a heartbeat); None: nothing due."""
        self._seq = 0
        """The last seq delivered or given up."""
        self._failures = 0
        self._next_try = 0.0
        self._last_sent = time.monotonic()
        self._sending = False
        self._draining = False
        self._thread = threading.Thread(target=self._run, name=f"listgate-feed {url}",
                                        daemon=True)
        self._thread.start()

    # --- called from Mailman's threads: never blocks

    def offer(self, changes: ChangeSet) -> None:
        """Queue *changes* for delivery, or drop them (and say ``all`` next) if full."""
        try:
            self._queue.put_nowait(changes)
        except queue.Full:
            with self._cond:
                self._overflow = True
                self.dropped += 1
            _limited.log(logging.WARNING, f"full {self.url}",
                         f"queue for {self.url} is full ({self._settings.queue_size}); "
                         "listgate will be told to drop its whole cache")

    # --- called at exit

    def start_drain(self) -> None:
        """From now on: deliver pending changes at once, once; never retry or heartbeat."""
        with self._cond:
            self._draining = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(NOTHING)  # wakes the thread

    def wait_idle(self, deadline: float) -> bool:
        """Wait (until the monotonic *deadline*) for every queued change to be handled."""
        with self._cond:
            while not self._idle():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _idle(self) -> bool:
        return (self._queue.unfinished_tasks == 0 and not self._sending
                and (self._pending is None or self._pending.empty))

    # --- the thread

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # never let the thread die
                _limited.log(logging.ERROR, f"bug {self.url}",
                             f"sender for {self.url} failed", exc_info=True)
                time.sleep(1.0)

    def _wait_time(self, now: float) -> float | None:
        if self._pending is not None:
            return max(0.0, self._next_try - now)
        if self._settings.heartbeat > 0 and not self._draining:
            return max(0.0, self._last_sent + self._settings.heartbeat - now)
        return None

    def _take(self, first: ChangeSet) -> None:
        """Merge *first* and everything else queued into the pending change set."""
        changes = [first]
        while True:
            try:
                changes.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._cond:
            for item in changes:
                if not item.empty:
                    self._pending = item if self._pending is None else self._pending.merge(item)
                self._queue.task_done()
            if self._overflow:
                self._overflow = False
                self._pending = EVERYTHING

    def _step(self) -> None:
        with self._cond:
            wait = self._wait_time(time.monotonic())
        try:
            first = self._queue.get(timeout=wait)
        except queue.Empty:
            pass
        else:
            self._take(first)
        now = time.monotonic()
        with self._cond:
            pending, draining = self._pending, self._draining
            if pending is None and not draining and self._settings.heartbeat > 0 \
                    and now - self._last_sent >= self._settings.heartbeat:
                pending = self._pending = NOTHING
            due = pending is not None and (now >= self._next_try or draining)
            if draining and pending is not None and pending.empty:
                due, self._pending = False, None  # no heartbeat on the way out
            self._sending = due
            if not due:
                self._cond.notify_all()
                return
        assert pending is not None
        try:
            self._deliver(pending)
        finally:
            with self._cond:
                self._sending = False
                if self._draining and self._pending is not None:
                    self._pending = None  # one try at exit; the process is going away
                self._cond.notify_all()

    def _deliver(self, changes: ChangeSet) -> None:
        seq = self._seq + 1
        body = encode(Message(self._stream, self._since, seq, time.time(), changes))
        try:
            status = self._publish(changes) if self._redis else self._post(body)
        except (OSError, http.client.HTTPException, _RedisFailure) as exc:
            self._failed(f"cannot deliver to {self.url}: {exc or type(exc).__name__}")
            return
        if 200 <= status < 300:
            with self._cond:
                self._seq = seq
                self._pending = None  # only this thread merges into it, and it was sending
                self._last_sent = time.monotonic()
                failures, self._failures = self._failures, 0
            if failures:
                log.info("listgate plugin: %s answers again (after %d failed attempts)",
                         self.url, failures)
            return
        if 400 <= status < 500 and status not in (408, 429):
            with self._cond:
                self._seq = seq  # given up: the listener will see the gap
                self._pending = None
                self._last_sent = time.monotonic()
            hint = ("is secret_file the same file listgate's [events] secret_file names?"
                    if status == 401 else "is it a listgate of the same version?")
            _limited.log(logging.ERROR, f"refused {self.url}",
                         f"{self.url} refused the change feed with HTTP {status} ({hint})")
            return
        self._failed(f"{self.url} answered HTTP {status}")

    def _failed(self, why: str) -> None:
        with self._cond:
            self._failures += 1
            cap = min(MAX_BACKOFF, self._settings.heartbeat or MAX_BACKOFF)
            delay = min(max(cap, 0.25), 0.25 * 2 ** min(self._failures - 1, 10))
            self._next_try = time.monotonic() + delay
            self._last_sent = time.monotonic()
        _limited.log(logging.WARNING, f"failed {self.url}", f"{why}; retrying")

    def _publish(self, changes: ChangeSet) -> int:
        """Delete the changed facts from listgate's shared tier and publish the
        invalidation on its channel (one MULTI); 200 when done. A heartbeat is a PING."""
        client = self._redis_client
        if client is None:
            try:
                import redis  # only here: Mailman's venv may lack it
            except ImportError:
                raise _RedisFailure("the Python package 'redis' is not installed in "
                                    "Mailman's venv (pip install redis)") from None
            client = self._redis_client = redis.Redis.from_url(
                self.url, password=self._settings.redis_password or None,
                socket_timeout=self._settings.timeout,
                socket_connect_timeout=self._settings.timeout)
        try:
            if changes.empty:
                client.ping()
                return 200
            change = _invalidation(changes, self._stream)
            if change.everything:
                for kind in {k for kinds in _REDIS_KINDS.values() for k in kinds}:
                    names = list(client.scan_iter(match=kind_pattern(kind), count=1000))
                    for i in range(0, len(names), 1000):
                        client.unlink(*names[i:i + 1000])
            with client.pipeline(transaction=True) as pipe:
                if change.names():
                    pipe.unlink(*change.names())
                pipe.publish(CHANNEL, encode_invalidation(change))
                pipe.execute()
        except Exception as exc:  # redis.RedisError and its kin: never past this thread
            raise _RedisFailure(str(exc) or type(exc).__name__) from None
        return 200

    def _post(self, body: bytes) -> int:
        conn: http.client.HTTPConnection
        timeout = self._settings.timeout
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._path, body=body, headers={
                "Content-Type": CONTENT_TYPE,
                SIGNATURE_HEADER: sign(self._settings.secret, body),
                "Connection": "close",
                "User-Agent": f"listgate-mailman-plugin/{__version__}",
            })
            response = conn.getresponse()
            response.read(4096)
            return int(response.status)
        finally:
            conn.close()


class _RedisFailure(Exception):
    """Publishing to Redis failed (the message is safe to log: never the password)."""


def _invalidation(changes: ChangeSet, origin: str) -> Invalidation:
    """*changes* as the shared tier's invalidation (``listgate.facts.sharedkeys``)."""
    if changes.everything:
        return Invalidation(origin, everything=True)
    keys = {(kind, list_id) for list_id in changes.lists for kind in _REDIS_KINDS["lists"]}
    keys |= {(kind, address) for address in changes.addresses
             for kind in _REDIS_KINDS["addresses"]}
    for part in ("directory", "global_bans"):
        if getattr(changes, part):
            keys |= {(kind, "") for kind in _REDIS_KINDS[part]}
    return Invalidation(origin, frozenset(keys))


class Feed:
    """The per-process sender: one ``_Target`` per notify URL, made on first use in each
    process (so a forked REST worker gets its own threads)."""

    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings
        self._pid = 0
        self._targets: tuple[_Target, ...] = ()
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork)
        atexit.register(self.drain)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a lock held at fork time stays held in the child

    def targets(self) -> tuple[_Target, ...]:
        """This process's targets, started now if needed."""
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    stream = f"{socket.gethostname()}/{pid}/{secrets.token_hex(4)}"
                    since = time.time()
                    self._targets = tuple(_Target(url, self.settings, stream, since)
                                          for url in self.settings.notify)
                    self._pid = pid
        return self._targets

    def submit(self, changes: ChangeSet) -> None:
        """Queue *changes* for every listener (never blocks)."""
        for target in self.targets():
            target.offer(changes)

    def drain(self, budget: float = DRAIN_SECONDS) -> None:
        """At exit: give the queued changes up to *budget* seconds in all to go out."""
        if self._pid != os.getpid():
            return  # this process never started sending
        deadline = time.monotonic() + budget
        for target in self._targets:
            target.start_drain()
        for target in self._targets:
            if not target.wait_idle(deadline):
                _limited.log(logging.WARNING, f"exit {target.url}",
                             f"exiting with changes for {target.url} undelivered")


# --------------------------------------------------------------------------- collecting


class _Collected:
    """Mutable accumulator of one flush's cache keys."""

    def __init__(self) -> None:
        self.lists: set[str] = set()
        self.addresses: set[str] = set()
        self.directory = False
        self.global_bans = False

    def frozen(self) -> ChangeSet:
        return ChangeSet(frozenset(self.lists), frozenset(a.lower() for a in self.addresses),
                         self.directory, self.global_bans)


def _changed(obj: Any) -> set[str]:
    """Names of *obj*'s attributes whose value this flush changed (no lazy loads)."""
    from sqlalchemy import inspect

    return {attr.key for attr in inspect(obj).attrs if attr.history.has_changes()}


def _history(obj: Any, key: str) -> list[Any]:
    """Old and new values of one attribute in this flush (current value if unchanged)."""
    from sqlalchemy import inspect

    hist = inspect(obj).attrs[key].history
    values = [*hist.added, *hist.deleted, *hist.unchanged]
    return values or [getattr(obj, key, None)]


def _user_emails(session: Any, user_id: object) -> set[str]:
    from mailman.model.user import User

    if user_id is None:
        return set()
    user = session.get(User, user_id)
    if user is None:
        return set()
    return {str(a.email) for a in user.addresses}


def _address_email(session: Any, address_id: object) -> set[str]:
    from mailman.model.address import Address

    if address_id is None:
        return set()
    address = session.get(Address, address_id)
    return set() if address is None else {str(address.email)}


def _list_id(session: Any, mailing_list_id: object) -> str | None:
    from mailman.model.mailinglist import MailingList

    if mailing_list_id is None:
        return None
    mlist = session.get(MailingList, mailing_list_id)
    return None if mlist is None else str(mlist.list_id)


def _member(session: Any, obj: Any, how: str, out: _Collected) -> None:
    if how == "dirty":
        if not _changed(obj) & _MEMBER_KEYS:
            return
    elif getattr(obj.role, "name", None) == "nonmember" and obj.moderation_action is None:
        return  # a bare nonmember record decides what no record decides
    for address_id in _history(obj, "address_id"):
        out.addresses |= _address_email(session, address_id)
    for user_id in _history(obj, "user_id"):  # subscribed as a user: all its addresses
        out.addresses |= _user_emails(session, user_id)


def _address(session: Any, obj: Any, how: str, out: _Collected) -> None:
    if how == "dirty" and not _changed(obj) & _ADDRESS_KEYS:
        return
    user_ids = _history(obj, "user_id")
    if how == "new" and all(u is None for u in user_ids):
        return  # an address nobody uses yet: no fact about it changes
    out.addresses.update(str(e) for e in _history(obj, "email") if e)
    for user_id in user_ids:
        out.addresses |= _user_emails(session, user_id)


def _user(session: Any, obj: Any, how: str, out: _Collected) -> None:
    if how == "new" or (how == "dirty" and "_preferred_address_id" not in _changed(obj)):
        return
    out.addresses |= _user_emails(session, obj.id)


def _ban(session: Any, obj: Any, how: str, out: _Collected) -> None:
    for list_id in _history(obj, "list_id"):
        if list_id is None:
            out.global_bans = True
        else:
            out.lists.add(str(list_id))


def _mailing_list(session: Any, obj: Any, how: str, out: _Collected) -> None:
    if how == "dirty":
        changed = _changed(obj) - _LIST_NOISE
        if not changed:
            return
        if changed & _LIST_DIRECTORY:
            out.directory = True
    else:
        out.directory = True
    out.lists.update(str(v) for v in _history(obj, "_list_id") if v)


def _domain(session: Any, obj: Any, how: str, out: _Collected) -> None:
    if how != "dirty" or _changed(obj) & _DOMAIN_KEYS:
        out.directory = True


def _of_list(session: Any, obj: Any, how: str, out: _Collected) -> None:
    for mailing_list_id in _history(obj, "mailing_list_id"):
        list_id = _list_id(session, mailing_list_id)
        if list_id is None:
            raise LookupError("a list setting row without its list")
        out.lists.add(list_id)


_HANDLERS: dict[str, Callable[[Any, Any, str, _Collected], None]] = {
    "member": _member,
    "address": _address,
    "user": _user,
    "ban": _ban,
    "mailinglist": _mailing_list,
    "domain": _domain,
    "acceptablealias": _of_list,
    "headermatch": _of_list,
}
"""Mailman table -> what a new, dirty or deleted row of it invalidates."""


def collect_flush(session: Any) -> ChangeSet:
    """The cache keys a flush touched (call from ``after_flush``: SQL is still allowed)."""
    out = _Collected()
    with session.no_autoflush:
        for how, objects in (("new", session.new), ("dirty", session.dirty),
                             ("deleted", session.deleted)):
            for obj in list(objects):
                handler = _HANDLERS.get(getattr(obj, "__tablename__", ""))
                if handler is not None:
                    handler(session, obj, how, out)
    return out.frozen()


def collect_bulk(state: Any) -> ChangeSet | None:
    """The cache keys a bulk DELETE/UPDATE touches (``do_orm_execute``); None if it touches
    none. Mailman deletes a list's bans and acceptable aliases this way."""
    if not (state.is_delete or state.is_update):
        return None
    table = getattr(getattr(state.statement, "table", None), "name", "")
    if table not in ("ban", "acceptablealias"):
        return None
    params = state.statement.compile().params
    out = _Collected()
    for key, value in params.items():
        if table == "ban" and key.startswith("list_id") and isinstance(value, str):
            out.lists.add(value)
        elif table == "acceptablealias" and key.startswith("mailing_list_id"):
            list_id = _list_id(state.session, value)
            if list_id is not None:
                out.lists.add(list_id)
    changes = out.frozen()
    return EVERYTHING if changes.empty else changes


# --------------------------------------------------------------------------- session hooks


def _add(session: Any, changes: ChangeSet) -> None:
    if changes.empty:
        return
    held = session.info.get(_INFO_KEY)
    session.info[_INFO_KEY] = changes if held is None else held.merge(changes)


def install(sessionmaker: Any, feed: Feed) -> None:
    """Register the session listeners on Mailman's session factory."""
    from sqlalchemy import event

    def after_flush(session: Any, flush_context: object) -> None:
        try:
            _add(session, collect_flush(session))
        except Exception:
            _limited.log(logging.ERROR, "collect", "cannot read a flush's changes; "
                         "listgate will drop its whole cache", exc_info=True)
            with contextlib.suppress(Exception):
                session.info[_INFO_KEY] = EVERYTHING

    def do_orm_execute(state: Any) -> None:
        try:
            changes = collect_bulk(state)
            if changes is not None:
                _add(state.session, changes)
        except Exception:
            _limited.log(logging.ERROR, "bulk", "cannot read a bulk statement's changes; "
                         "listgate will drop its whole cache", exc_info=True)
            with contextlib.suppress(Exception):
                state.session.info[_INFO_KEY] = EVERYTHING

    def after_commit(session: Any) -> None:
        try:
            changes = session.info.pop(_INFO_KEY, None)
            targets = feed.targets()  # starts this process's threads (heartbeats) if needed
            if changes is not None:
                for target in targets:
                    target.offer(changes)
        except Exception:
            _limited.log(logging.ERROR, "commit", "cannot queue a commit's changes",
                         exc_info=True)

    def after_transaction_end(session: Any, transaction: Any) -> None:
        try:
            if transaction.parent is None:
                session.info.pop(_INFO_KEY, None)  # rolled back or closed: nothing happened
        except Exception:
            _limited.log(logging.ERROR, "end", "cannot clear a transaction's changes",
                         exc_info=True)

    event.listen(sessionmaker, "after_flush", after_flush)
    event.listen(sessionmaker, "do_orm_execute", do_orm_execute)
    event.listen(sessionmaker, "after_commit", after_commit)
    event.listen(sessionmaker, "after_transaction_end", after_transaction_end)


# --------------------------------------------------------------------------- the plugin


class ListgatePlugin:
    """Mailman's ``IPlugin``: no REST resource; the work starts in ``post_hook``."""

    resource = None

    def __init__(self) -> None:
        self.name = SECTION
        """Set by Mailman to the ``[plugin.NAME]`` section name."""
        self.feed: Feed | None = None
        with contextlib.suppress(ImportError):  # outside Mailman: tests, type checks
            from mailman.interfaces.plugin import IPlugin
            from zope.interface import classImplements

            classImplements(ListgatePlugin, IPlugin)

    def pre_hook(self) -> None:
        """Nothing to do before the database exists."""

    def post_hook(self) -> None:
        """Read the configuration and register the session listeners; on any problem, log
        it and stay inert (Mailman runs on, listgate falls back to its cache lifetimes)."""
        try:
            from mailman.config import config
            from mailman.config.config import external_configuration

            section = getattr(config, "plugin." + self.name)
            path = str(section.configuration).strip()
            if not path:
                raise EventError(f"[plugin.{self.name}] configuration: names no file")
            settings = parse_settings(external_configuration(path))
            self.feed = Feed(settings)
            install(config.db.sessionmaker, self.feed)
        except Exception as exc:
            log.error("listgate plugin: disabled, no change feed: %s", exc)
            return
        log.info("listgate plugin: change feed to %s (heartbeat %g s)",
                 " ".join(settings.notify), settings.heartbeat)
