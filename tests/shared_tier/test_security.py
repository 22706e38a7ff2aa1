"""The shared tier's secrets: the Redis password lives in a file, reaches Redis, and shows
nowhere else (not in a URL, not in ``config check``, not in what is stored)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from listgate.config import load_config
from listgate.decision.model import PostingRequest
from listgate.facts.registry import create_backend
from listgate.mailman.backend import MailmanBackend
from tests.fakes import FakeMailmanRecords
from tests.redis_harness import RedisServer

REDIS_PASSWORD = "redis-Secret-7f3a"
REST_PASSWORD = "rest-Secret-91bc"


def write_config(tmp_path: Path, url: str) -> Path:
    pw = tmp_path / "redis-password"
    pw.write_text(REDIS_PASSWORD + "\n")
    pw.chmod(0o640)
    path = tmp_path / "listgate.toml"
    path.write_text(
        '[backend]\ntype = "mailman"\n'
        f'[mailman]\npassword = "{REST_PASSWORD}"\n'
        f'[cache]\nredis_url = "{url}"\nredis_password_file = "{pw}"\n'
    )
    return path


def test_password_file_reaches_redis_and_nothing_stored_holds_a_secret(
        tmp_path: Path) -> None:
    """A Redis with requirepass is used through redis_password_file; no key or value in it
    holds the REST or the Redis password."""
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    server.start()
    try:
        config = load_config(write_config(tmp_path, server.url))
        backend = create_backend(config)
        assert isinstance(backend, MailmanBackend)
        assert backend.shared is not None
        fake = FakeMailmanRecords(("m@example.net",))
        backend.source = fake  # no Mailman here: the fetches read self.source at lookup

        async def body() -> None:
            facts = await backend.lookup(PostingRequest("m@example.net", fake.LIST))
            assert facts.senders[0].member is not None
            await backend.aclose()

        asyncio.run(body())
        dump = server.cli("KEYS", "*") + "".join(
            server.cli("GET", line) for line in server.cli("KEYS", "*").split("\r\n")
            if line.startswith("listgate:"))
        assert "listgate:v1:memberships:m@example.net" in dump
        assert REST_PASSWORD not in dump
        assert REDIS_PASSWORD not in dump
        assert "restadmin" not in dump
    finally:
        server.stop()


def test_config_check_hides_the_redis_password(tmp_path: Path) -> None:
    """``listgate config check`` shows the password file's path, never its content."""
    path = write_config(tmp_path, "redis://127.0.0.1:6390/0")
    out = subprocess.run([sys.executable, "-m", "listgate", "config", "check", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "redis-password" in out.stdout
    assert REDIS_PASSWORD not in out.stdout + out.stderr


def test_a_redis_url_with_a_password_is_refused(tmp_path: Path) -> None:
    """A password in redis_url is refused in favour of redis_password_file, and the
    message does not repeat it."""
    path = tmp_path / "listgate.toml"
    path.write_text('[backend]\ntype = "mailman"\n[mailman]\npassword = "x"\n'
                    f'[cache]\nredis_url = "redis://listgate:{REDIS_PASSWORD}@127.0.0.1/0"\n')
    out = subprocess.run([sys.executable, "-m", "listgate", "config", "check", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert "redis_password_file" in out.stderr + out.stdout
    assert REDIS_PASSWORD not in out.stdout + out.stderr
