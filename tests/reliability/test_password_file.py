"""listgate warns at start-up when the file holding Mailman's REST password is readable
by other users (mode & 0o004), naming ``mailman.password_file``; never otherwise, and
never with the password in the line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from listgate.config import load_config, password_file_warnings

from .helpers import Serve, free_port, toml

PASSWORD = "pw-Secr3t-never-shown"


def _config(tmp_path: Path, mode: int, port: int = 0) -> Path:
    secret = tmp_path / "mailman-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(mode)
    path = tmp_path / "listgate.toml"
    path.write_text(toml({
        "milter": {"listen": f"inet:127.0.0.1:{port}"},
        "backend": {"type": "mailman"},
        "mailman": {"url": "http://127.0.0.1:9/3.1", "password_file": str(secret)},
    }))
    return path


@pytest.mark.parametrize(("mode", "warned"), [
    (0o600, False), (0o640, False), (0o660, False), (0o604, True), (0o644, True),
    (0o666, True), (0o755, True),
])
def test_warning_only_when_other_may_read(tmp_path: Path, mode: int, warned: bool) -> None:
    """Only the "other" read bit matters (group read is the documented 0640)."""
    warnings = password_file_warnings(load_config(_config(tmp_path, mode)))
    assert bool(warnings) is warned
    for w in warnings:
        assert w.startswith("mailman.password_file: ")
        assert f"{mode:04o}" in w
        assert PASSWORD not in w


def test_no_warning_for_inline_password_or_static_backend(tmp_path: Path) -> None:
    """No password file, no warning (static backend, or an inline password)."""
    path = tmp_path / "a.toml"
    path.write_text(toml({"backend": {"type": "mailman"},
                          "mailman": {"password": PASSWORD}}))
    assert password_file_warnings(load_config(path)) == []
    path.write_text('[static.posters]\n"l@example.org" = ["a@example.org"]\n')
    assert password_file_warnings(load_config(path)) == []


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, False)])
def test_daemon_warns_at_startup(tmp_path: Path, mode: int, warned: bool) -> None:
    """A real ``listgate serve`` logs one WARNING naming mailman.password_file before it
    is ready (0644), and none for 0640; the password is nowhere in its log."""
    port = free_port()
    config = _config(tmp_path, mode, port).read_text()
    serve = Serve(tmp_path, config, wait_for=(f"inet:127.0.0.1:{port}",)).start()
    try:
        log = serve.log()
    finally:
        serve.stop()
    lines = [line for line in log.splitlines() if "mailman.password_file" in line]
    if warned:
        assert len(lines) == 1, log
        assert " WARNING listgate: " in lines[0]
        assert "readable by other users (mode 0644)" in lines[0]
        assert log.index(lines[0]) < log.index("listgate ready")
    else:
        assert lines == [], log
    assert PASSWORD not in log


def test_warning_goes_through_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The in-process daemon start logs it on the ``listgate`` logger at WARNING."""
    import asyncio

    from listgate.app import Daemon

    config = load_config(_config(tmp_path, 0o644))

    async def start_stop() -> None:
        daemon = Daemon(config)
        await daemon.start()
        await daemon.stop()

    with caplog.at_level(logging.WARNING, logger="listgate"):
        asyncio.run(start_stop())
    hits = [r for r in caplog.records if "mailman.password_file" in r.getMessage()]
    assert len(hits) == 1
    assert hits[0].levelno == logging.WARNING
    assert hits[0].name == "listgate"


@pytest.mark.parametrize(("section", "settings", "key"), [
    ("cache", {"redis_url": "redis://127.0.0.1:9/0"}, "redis_password_file"),
    ("events", {"listen": "inet:127.0.0.1:9"}, "secret_file"),
])
@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, False)])
def test_every_secret_file_is_checked(tmp_path: Path, section: str, settings: dict[str, str],
                                      key: str, mode: int, warned: bool) -> None:
    """The Redis password file and the change feed's secret file get the same warning as
    Mailman's password file, naming their own key, without the secret."""
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(mode)
    path = tmp_path / "listgate.toml"
    path.write_text(toml({
        "backend": {"type": "mailman"},
        "mailman": {"url": "http://127.0.0.1:9/3.1", "password": "inline"},
        section: {**settings, key: str(secret)},
    }))
    warnings = password_file_warnings(load_config(path))
    assert [w.split(":", 1)[0] for w in warnings] == ([f"{section}.{key}"] if warned else [])
    assert all(f"{mode:04o}" in w and PASSWORD not in w for w in warnings)
