"""Backend construction: one table from ``[backend] type`` to the factory that builds it.

Invariants:
- ``BACKENDS`` has exactly the names of ``listgate.config.BACKEND_TYPES`` (which config
  validation accepts); a unit test holds the two equal, so a new backend is one entry
  here plus its name there.
- A factory imports its backend's modules when called, so a static setup never imports
  the Mailman REST client (mailmanclient, httpx).
- ``[cache] redis_url`` gives the Mailman backend a shared tier (``listgate.facts.redis``,
  imported only then); its password file is read here, at start.
- Every factory returns a ``listgate.facts.contract.Backend``; a configuration it cannot
  use is a ``ListgateError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from listgate.config import Config
from listgate.errors import ListgateError
from listgate.facts.contract import Backend

if TYPE_CHECKING:
    from listgate.facts.redis import RedisTier

__all__ = ["BACKENDS", "BackendFactory", "create_backend"]

BackendFactory = Callable[[Config], Backend]


def _static(config: Config) -> Backend:
    from listgate.facts.static import StaticBackend

    return StaticBackend(config.static.posters)


def _mailman(config: Config) -> Backend:
    from listgate.mailman.backend import MailmanBackend
    from listgate.mailman.client import MailmanClient

    mm = config.mailman
    if mm.password is None:
        raise ListgateError("mailman.password: required when backend.type = \"mailman\"")
    client = MailmanClient(
        mm.url,
        mm.user,
        mm.password.reveal(),
        timeout=mm.timeout,
        max_connections=mm.max_connections,
    )
    return MailmanBackend(
        client,
        config.cache,
        directory_file=Path(mm.directory_file) if mm.directory_file else None,
        deadline=mm.timeout,
        shared=_shared_tier(config),
    )


def _shared_tier(config: Config) -> RedisTier | None:
    """The Redis tier ``[cache] redis_url`` names, or None. Fetch locks last one REST
    timeout; a host waits for another's fetch for at most half the decision deadline,
    so that it can still fetch itself within it."""
    cache = config.cache
    if not cache.redis_url:
        return None
    from listgate.config import read_redis_password
    from listgate.facts.redis import RedisTier

    password = read_redis_password(cache)
    return RedisTier(
        cache.redis_url,
        password=None if password is None else password.reveal(),
        timeout=cache.redis_timeout,
        lock_ttl=config.mailman.timeout,
        wait=config.mailman.timeout / 2,
    )


BACKENDS: Mapping[str, BackendFactory] = MappingProxyType({
    "static": _static,
    "mailman": _mailman,
})
"""``[backend] type`` → factory."""


def create_backend(config: Config) -> Backend:
    """The backend the configuration names."""
    factory = BACKENDS.get(config.backend.type)
    if factory is None:
        raise ListgateError(f"backend.type: unknown backend {config.backend.type!r}")
    return factory(config)
