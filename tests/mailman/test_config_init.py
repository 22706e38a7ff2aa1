"""``listgate config init --mailman-cfg`` against the suite's real Mailman core, with the
core's own ``mailman.cfg``: the config it writes passes ``config check``, a daemon on it
answers 550 and CONTINUE through the milter, the password stays in its 0640 file, and a
stopped core, a wrong password and a wrong port are each named exactly."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailman_harness import REPO_ROOT, MailmanCore, free_port, mailman_venv

from listgate.config_init import MAILMAN_WEBSERVICE_DEFAULTS

MEMBER = "member@example.com"
OUTSIDER = "outsider@example.net"


def listgate(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m listgate ARGV`` with this checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "listgate", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=REPO_ROOT, env=env)


def mailman_cfg_variant(core: MailmanCore, tmp_path: Path, **webservice: str) -> Path:
    """A copy of the core's mailman.cfg with some [webservice] keys changed."""
    text = core.config_path.read_text()
    for key, value in webservice.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line
                 for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    path = tmp_path / "mailman.cfg"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def gated_list(mailman_core: MailmanCore) -> Iterator[str]:
    """A list that rejects nonmembers, with MEMBER subscribed; its posting address."""
    ml = mailman_core.new_list(settings={"default_nonmember_action": "reject"})
    mailman_core.subscribe(ml, MEMBER)
    try:
        yield str(ml.fqdn_listname)
    finally:
        if not mailman_core.is_running:
            mailman_core.start()
        mailman_core.delete_list(ml)


def test_defaults_are_those_of_the_installed_mailman() -> None:
    """The [webservice] defaults init assumes are the installed Mailman's schema.cfg."""
    [schema] = (mailman_venv() / "lib").glob("python3*/site-packages/mailman/config/schema.cfg")
    parser = configparser.RawConfigParser(strict=False)
    parser.read(schema)
    installed = {k: parser.get("webservice", k) for k in MAILMAN_WEBSERVICE_DEFAULTS}
    assert installed == dict(MAILMAN_WEBSERVICE_DEFAULTS)


def test_init_check_serve(mailman_core: MailmanCore, gated_list: str, tmp_path: Path) -> None:
    """init writes a config that passes config check; serve on it answers 550 for a
    nonmember and CONTINUE for a member through the milter; the password is only in its
    0640 file (not in the config, init's output, config check's output or the log)."""
    port = free_port()
    conf, pw = tmp_path / "listgate.toml", tmp_path / "mailman-password"
    init = listgate("config", "init", "--mailman-cfg", str(mailman_core.config_path),
                    "--password-file", str(pw), "--output", str(conf),
                    "--listen", f"inet:127.0.0.1:{port}")
    assert init.returncode == 0, init.stderr
    assert init.stdout == ""
    assert f"answers at {mailman_core.url} (REST API 3.1, user {mailman_core.user})" in (
        init.stderr)
    assert f"listgate:   {gated_list}\n" in init.stderr
    assert f"'smtpd_milters = inet:127.0.0.1:{port}" in init.stderr or (
        "No MTA found" in init.stderr)
    assert stat.S_IMODE(pw.stat().st_mode) == 0o640
    assert pw.read_text().strip() == mailman_core.password

    check = listgate("config", "check", str(conf))
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[0] == f"# {conf}: OK"

    log_path = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "listgate", "serve", "--allow-root", "--config", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    try:
        deadline = time.monotonic() + 20
        while "listgate ready" not in log_path.read_text():
            assert daemon.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        via = f"inet:127.0.0.1:{port}"
        outsider = listgate("check", OUTSIDER, gated_list, "--via", via)
        member = listgate("check", MEMBER, gated_list, "--via", via)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    assert outsider.returncode == 1, outsider.stdout + outsider.stderr
    assert "reply:   550 5.7.1" in outsider.stdout
    assert "(milter reply" in outsider.stdout
    assert member.returncode == 0, member.stdout + member.stderr
    assert "(milter reply CONTINUE)" in member.stdout, member.stdout
    everywhere = [conf.read_text(), init.stdout, init.stderr, check.stdout, check.stderr,
                  log_path.read_text(), outsider.stdout, member.stdout]
    assert not [text for text in everywhere if mailman_core.password in text]


def init_failure(mailman_cfg: Path, tmp_path: Path) -> str:
    """Run init against *mailman_cfg*; assert exit 1 and nothing written; its error line."""
    conf, pw = tmp_path / "out.toml", tmp_path / "out-password"
    proc = listgate("config", "init", "--mailman-cfg", str(mailman_cfg), "--password-file",
                    str(pw), "--output", str(conf))
    assert proc.returncode == 1, proc.stderr
    assert not conf.exists()
    assert not pw.exists()
    assert proc.stdout == ""
    [line] = [x for x in proc.stderr.splitlines() if "check failed" in x]
    assert "listgate: nothing written" in proc.stderr
    return line


def test_stopped_core_is_connection_refused(mailman_core: MailmanCore, tmp_path: Path) -> None:
    """With the core stopped: "connection refused" by its host and port."""
    mailman_core.stop()
    try:
        line = init_failure(mailman_core.config_path, tmp_path)
    finally:
        mailman_core.start()
    assert line == (
        f"listgate: Mailman REST check failed: connection refused by 127.0.0.1:"
        f"{mailman_core.port}: is Mailman core running, and is [webservice] hostname/port "
        "right?")


def test_wrong_password_is_401(mailman_core: MailmanCore, tmp_path: Path) -> None:
    """With a wrong admin_pass: 401, the user or password is wrong; neither password shown."""
    cfg = mailman_cfg_variant(mailman_core, tmp_path, admin_pass="not-the-password")
    line = init_failure(cfg, tmp_path)
    assert line == (
        f"listgate: Mailman REST check failed: {mailman_core.url} answered 401 Unauthorized: "
        "the user or password is wrong (Mailman's [webservice] admin_user and admin_pass)")


def test_wrong_port_is_named(mailman_core: MailmanCore, tmp_path: Path) -> None:
    """With the port of something that is not HTTP (it hangs up): no HTTP answer there."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        with server:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        line = init_failure(mailman_cfg_variant(mailman_core, tmp_path, port=str(port)),
                            tmp_path)
    finally:
        server.close()
    assert line.startswith(
        f"listgate: Mailman REST check failed: 127.0.0.1:{port} gave no HTTP answer ("), line
    assert line.endswith("not Mailman's REST port, or it expects TLS (Mailman's "
                         "[webservice] use_https)"), line
