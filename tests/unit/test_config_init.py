"""``listgate config init``: the rendered configs, Mailman's ``[webservice]`` with Mailman's
defaults, the MTA lines, the files it writes or refuses to write, and the exact failure the
REST check names against small loopback servers (the real Mailman core is in
tests/mailman/test_config_init.py)."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import socket
import stat
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port

from listgate import config as config_module
from listgate import config_init
from listgate.cli import main
from listgate.config import load_config, parse_config
from listgate.config_init import (
    MAILMAN_WEBSERVICE_DEFAULTS,
    FoundMta,
    MailmanTarget,
    Mta,
    WebService,
    detect_mtas,
    mta_hints,
    read_mailman_cfg,
    render_config,
    toml_value,
    webservice_from_ini,
)
from listgate.errors import BackendUnavailable, ConfigError
from listgate.listen import parse_listen_spec
from listgate.mailman.probe import probe_rest

LISTEN = (parse_listen_spec("inet:127.0.0.1:8890"),)
SECRET = "s3cret-Pass_word"
ALL_SECTIONS = set(config_module._SCHEMA) | {"lists"}


def uncommented(text: str) -> dict[str, object]:
    """*text* with every commented-out key and table ("#key = ...", "#[t]") switched on."""
    return tomllib.loads(re.sub(r"(?m)^#(?=[\[\"A-Za-z_])", "", text))


def mailman_target(tmp_path: Path) -> MailmanTarget:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    return MailmanTarget("http://127.0.0.1:8001/3.1", "restadmin", str(pw), "mailman.cfg")


# --------------------------------------------------------------------------- rendering


def test_static_config_loads_and_sets_only_what_matters() -> None:
    """The static config loads, listens where asked and sets only listen, type and posters."""
    text = render_config("static", LISTEN)
    cfg = parse_config(tomllib.loads(text), "init.toml")
    assert cfg.backend.type == "static"
    assert [str(s) for s in cfg.milter.listen] == ["inet:127.0.0.1:8890"]
    assert tomllib.loads(text) == {"milter": {"listen": ["inet:127.0.0.1:8890"]},
                                   "backend": {"type": "static"}, "static": {"posters": {}}}


def test_static_config_is_complete_but_leaves_out_mailman_sections() -> None:
    """Uncommented, the static config names every key of every section that applies, and
    no [mailman], [cache] or [failure] (which do nothing for the static map)."""
    data = uncommented(render_config("static", LISTEN))
    assert set(data) == ALL_SECTIONS - {"mailman", "cache", "failure", "events"}
    for section, (_, keys) in config_module._SCHEMA.items():
        if section in data and section != "static":
            assert set(data[section]) == set(keys), section  # type: ignore[arg-type]
    assert parse_config(data).static.posters  # the commented example list is a valid one


def test_mailman_config_loads_with_password_file_only(tmp_path: Path) -> None:
    """The Mailman config loads, reads the password from its file and never names it."""
    target = mailman_target(tmp_path)
    text = render_config("mailman", LISTEN, target)
    assert SECRET not in text
    cfg = parse_config(tomllib.loads(text), "init.toml")
    assert (cfg.backend.type, cfg.mailman.url, cfg.mailman.user) == (
        "mailman", target.url, "restadmin")
    assert cfg.mailman.password is not None
    assert cfg.mailman.password.reveal() == SECRET
    assert tomllib.loads(text)["mailman"] == {
        "url": target.url, "user": "restadmin", "password_file": target.password_file}
    assert set(tomllib.loads(text)) == {"milter", "backend", "mailman"}


def test_mailman_config_is_complete_but_leaves_out_static(tmp_path: Path) -> None:
    """Uncommented, the Mailman config names every key except mailman.password, and no
    [static]."""
    data = uncommented(render_config("mailman", LISTEN, mailman_target(tmp_path)))
    assert set(data) == ALL_SECTIONS - {"static"}
    for section, (_, keys) in config_module._SCHEMA.items():
        if section in data:
            want = set(keys) - ({"password"} if section == "mailman" else set())
            assert set(data[section]) == want, section  # type: ignore[arg-type]


def test_commented_defaults_are_the_schema_defaults(tmp_path: Path) -> None:
    """Every commented default, uncommented, gives the default Config back."""
    data = uncommented(render_config("mailman", LISTEN, mailman_target(tmp_path)))
    del data["lists"], data["mailman"]["password_file"]  # type: ignore[attr-defined]
    data["backend"] = {"type": "static"}
    cfg = parse_config(data)
    assert config_module.config_to_dict(cfg) == config_module.config_to_dict(
        config_module.Config())


def test_render_refuses_mismatched_backend() -> None:
    """Mailman settings without the Mailman backend (or the reverse) is a programming error."""
    with pytest.raises(ValueError, match="mailman settings"):
        render_config("mailman", LISTEN)


@pytest.mark.parametrize(("value", "toml"), [
    (True, "true"), (10, "10"), (2.5, "2.5"), ('a "b"', '"a \\"b\\""'),
    (["x", 1], '["x", 1]'), ({"a@b": ["c"]}, '{"a@b" = ["c"]}'),
])
def test_toml_value(value: object, toml: str) -> None:
    """Values are written as TOML that reads back equal."""
    assert toml_value(value) == toml
    assert tomllib.loads(f"k = {toml}")["k"] == value


# --------------------------------------------------------------------------- mailman.cfg


def test_webservice_defaults_are_mailmans() -> None:
    """Absent keys take Mailman's own defaults (schema.cfg: localhost, 8001, no TLS, 3.1,
    restadmin/restpass); tests/mailman compares them with the installed Mailman."""
    ws = webservice_from_ini({}, "mailman.cfg")
    assert (ws.hostname, ws.port, ws.use_https, ws.api_version, ws.admin_user,
            ws.admin_pass) == ("localhost", 8001, False, "3.1", "restadmin", "restpass")
    assert ws.url == "http://localhost:8001/3.1"
    assert set(ws.defaulted) == set(MAILMAN_WEBSERVICE_DEFAULTS)
    assert "restpass" not in repr(ws)


@pytest.mark.parametrize(("values", "url"), [
    ({"hostname": "0.0.0.0", "port": "9001"}, "http://127.0.0.1:9001/3.1"),
    ({"hostname": "::"}, "http://[::1]:8001/3.1"),
    ({"hostname": "::1", "use_https": "Yes"}, "https://[::1]:8001/3.1"),
    ({"hostname": "mm.example.org", "use_https": "enabled", "api_version": "3.0"},
     "https://mm.example.org:8001/3.1"),
])
def test_webservice_url(values: dict[str, str], url: str) -> None:
    """Wildcard binds are reached on loopback, IPv6 goes in brackets, lazr booleans count,
    and listgate always speaks API 3.1."""
    assert webservice_from_ini(values, "mailman.cfg").url == url


def test_webservice_problems_name_keys_not_the_password() -> None:
    """A bad port or use_https is named by key; an empty admin_pass is named, never shown."""
    with pytest.raises(ConfigError) as info:
        webservice_from_ini({"port": "80x", "use_https": "maybe", "admin_pass": ""}, "m.cfg")
    assert info.value.problems == (
        'webservice.port: must be a port number from 1 to 65535, got "80x"',
        'webservice.use_https: must be yes or no, got "maybe"',
        "webservice.admin_pass: is empty",
    )


def test_read_mailman_cfg_like_lazr_config(tmp_path: Path) -> None:
    """mailman.cfg is read as Mailman reads it: a repeated section overrides single keys,
    "$VARS" stay as they are, and [meta] extends pulls in a base file first."""
    (tmp_path / "base.cfg").write_text("[webservice]\nport: 9000\nadmin_user: base\n")
    cfg = tmp_path / "mailman.cfg"
    cfg.write_text(
        "[meta]\nextends: base.cfg\n\n[paths.x]\nvar_dir: $HOME/var\n\n"
        "[webservice]\nhostname: 127.0.0.1\nadmin_pass: one\n\n"
        "[webservice]\nadmin_pass: two%$\n"
    )
    ws = read_mailman_cfg(cfg)
    assert (ws.hostname, ws.port, ws.admin_user, ws.admin_pass) == (
        "127.0.0.1", 9000, "base", "two%$")
    assert ws.defaulted == ("use_https", "api_version")


def test_read_mailman_cfg_problems_never_quote_lines(tmp_path: Path) -> None:
    """An unparsable mailman.cfg is named with line numbers only (a line may be the
    password); a missing one says so."""
    cfg = tmp_path / "mailman.cfg"
    cfg.write_text(f"[webservice]\nadmin_pass: x\n  \n{SECRET}\n[\n")
    with pytest.raises(ConfigError) as info:
        read_mailman_cfg(cfg)
    assert SECRET not in str(info.value)
    assert "not an ini file Mailman can read" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        read_mailman_cfg(tmp_path / "nope.cfg")


# --------------------------------------------------------------------------- the MTA


def test_postfix_lines_keep_existing_milters_first_after_listgate() -> None:
    """Postfix: one postconf -e with listgate first in smtpd_milters, existing milters
    kept, and a warning when listgate sits in non_smtpd_milters."""
    found = FoundMta(Mta.POSTFIX, "/usr/sbin/postconf",
                     "inet:127.0.0.1:8891, unix:/run/opendkim.sock", "inet:127.0.0.1:8890")
    text = "\n".join(mta_hints([found], LISTEN))
    assert ("'smtpd_milters = inet:127.0.0.1:8890, inet:127.0.0.1:8891, "
            "unix:/run/opendkim.sock'") in text
    assert "'milter_default_action = tempfail'" in text
    assert "non_smtpd_milters" in text
    assert "Sendmail" not in text
    assert "Exim" not in text


def test_postfix_lines_when_listgate_is_already_there() -> None:
    """Postfix: smtpd_milters is not repeated when it already names listgate's socket."""
    found = FoundMta(Mta.POSTFIX, "postconf", "inet:127.0.0.1:8890")
    text = "\n".join(mta_hints([found], LISTEN))
    assert "already names inet:127.0.0.1:8890" in text
    assert "'smtpd_milters" not in text


@pytest.mark.parametrize(("spec", "postfix", "sendmail"), [
    ("inet:127.0.0.1:8890", "inet:127.0.0.1:8890", "S=inet:8890@127.0.0.1"),
    ("inet6:[::1]:8890", "inet:[::1]:8890", "S=inet6:8890@::1"),
    ("unix:/run/listgate/milter.sock", "unix:/run/listgate/milter.sock",
     "S=local:/run/listgate/milter.sock"),
])
def test_socket_spelled_for_each_mta(spec: str, postfix: str, sendmail: str) -> None:
    """With no MTA found, every MTA's lines are given, the socket spelled its way."""
    text = "\n".join(mta_hints([], (parse_listen_spec(spec),)))
    assert f"'smtpd_milters = {postfix}'" in text
    assert f"INPUT_MAIL_FILTER(`listgate', `{sendmail}, F=T," in text
    assert "No MTA found" in text
    assert "Exim" in text
    assert "issue 16" in text


def test_detect_mtas() -> None:
    """Postfix by postconf (its milters read with postconf -h), Exim by exim4, Sendmail by
    sendmail.mc; Postfix's own sendmail binary is not Sendmail."""
    tools = {"postconf": "/usr/sbin/postconf", "sendmail": "/usr/sbin/sendmail"}
    asked: list[tuple[str, ...]] = []

    def postconf(path: str, names: object) -> list[str]:
        asked.append((path, *names))  # type: ignore[misc]
        return ["inet:127.0.0.1:1", ""]

    found = detect_mtas(tools.get, lambda path: False, postconf)
    assert found == [FoundMta(Mta.POSTFIX, "/usr/sbin/postconf", "inet:127.0.0.1:1", "")]
    assert asked == [("/usr/sbin/postconf", "smtpd_milters", "non_smtpd_milters")]
    only_sendmail = detect_mtas({"sendmail": "/usr/sbin/sendmail"}.get, lambda p: False)
    assert [f.mta for f in only_sendmail] == [Mta.SENDMAIL]
    exim_and_mc = detect_mtas({"exim4": "/usr/sbin/exim4"}.get,
                              lambda p: p == "/etc/mail/sendmail.mc")
    assert [f.mta for f in exim_and_mc] == [Mta.EXIM, Mta.SENDMAIL]
    assert detect_mtas(lambda name: None, lambda p: False) == []


# --------------------------------------------------------------------------- the command


@pytest.fixture(autouse=True)
def _no_mta_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's tests do not depend on (or wait for) this host's MTA."""
    monkeypatch.setattr(config_init, "detect_mtas", lambda: [])


def test_static_to_stdout_hints_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --output, stdout is the config alone; the MTA lines go to stderr."""
    assert main(["config", "init", "--listen", "inet:127.0.0.1:9999"]) == 0
    out, err = capsys.readouterr()
    assert parse_config(tomllib.loads(out)).milter.listen == (
        parse_listen_spec("inet:127.0.0.1:9999"),)
    assert "listgate changes nothing there" in err
    assert "listgate changes nothing" not in out


def test_static_to_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--output writes the file, which listgate config check accepts."""
    out = tmp_path / "listgate.toml"
    assert main(["config", "init", "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert load_config(out).backend.type == "static"
    assert main(["config", "check", str(out)]) == 0


def test_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing --output or --password-file is refused (exit 2) and left as it was."""
    out = tmp_path / "listgate.toml"
    out.write_text("mine")
    assert main(["config", "init", "--output", str(out)]) == 2
    assert out.read_text() == "mine"
    assert f"listgate: {out} exists; config init never overwrites a file" in (
        capsys.readouterr().err)
    mm = tmp_path / "mailman.cfg"
    mm.write_text(f"[webservice]\nadmin_pass: {SECRET}\n")
    pw = tmp_path / "pw"
    pw.write_text("old")
    rc = main(["config", "init", "--mailman-cfg", str(mm), "--password-file", str(pw),
               "--output", str(tmp_path / "new.toml"), "--no-check"])
    assert rc == 2
    assert pw.read_text() == "old"
    assert not (tmp_path / "new.toml").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--password-file", "pw"], "--password-file goes with --mailman-cfg"),
    (["--mailman-cfg", "m.cfg"], "--mailman-cfg needs --password-file FILE"),
    (["--no-check"], "--no-check goes with --mailman-cfg"),
    (["--listen", "tcp:1"], "--listen: 'tcp:1': unknown socket family"),
    (["--mailman-cfg", "/nonexistent/m.cfg", "--password-file", "pw"],
     "/nonexistent/m.cfg: cannot read: No such file or directory"),
])
def test_usage_problems(argv: list[str], message: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Options that do not go together, or a missing mailman.cfg: exit 2, one line."""
    monkeypatch.chdir(tmp_path)
    assert main(["config", "init", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("listgate: ")
    assert message in err, err
    assert list(tmp_path.iterdir()) == []


def test_no_check_writes_password_file_0640(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--no-check writes both files without asking Mailman: the password only in its own
    file, mode 0640 whatever the umask; not in the config, stdout or stderr."""
    mm = tmp_path / "mailman.cfg"
    mm.write_text(f"[webservice]\nport: 1\nadmin_pass: {SECRET}\n")
    pw, out = tmp_path / "pw", tmp_path / "listgate.toml"
    rc = main(["config", "init", "--mailman-cfg", str(mm), "--password-file", str(pw),
               "--output", str(out), "--no-check"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert stat.S_IMODE(pw.stat().st_mode) == 0o640
    assert pw.read_text() == SECRET + "\n"
    assert SECRET not in out.read_text() + captured.out + captured.err
    cfg = load_config(out)
    assert cfg.mailman.url == "http://localhost:1/3.1"
    assert cfg.mailman.password is not None
    assert cfg.mailman.password.reveal() == SECRET
    assert "--no-check: Mailman was not asked" in captured.err


def test_password_file_removed_when_config_cannot_be_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """If the config cannot be created, the password file just written is removed again."""
    mm = tmp_path / "mailman.cfg"
    mm.write_text(f"[webservice]\nadmin_pass: {SECRET}\n")
    pw = tmp_path / "pw"
    rc = main(["config", "init", "--mailman-cfg", str(mm), "--password-file", str(pw),
               "--output", str(tmp_path / "no-such-dir" / "l.toml"), "--no-check"])
    assert rc == 2
    assert "cannot create" in capsys.readouterr().err
    assert not pw.exists()


def test_a_user_listgate_cannot_use_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An admin_user listgate's schema refuses stops init before anything is written."""
    mm = tmp_path / "mailman.cfg"
    mm.write_text(f"[webservice]\nadmin_user: a:b\nadmin_pass: {SECRET}\n")
    rc = main(["config", "init", "--mailman-cfg", str(mm), "--password-file",
               str(tmp_path / "pw"), "--no-check"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "the config would not load: mailman.user: must be a non-empty user name" in err
    assert SECRET not in err
    assert not (tmp_path / "pw").exists()


# --------------------------------------------------------------------------- the REST check


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 404
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[int, type[_Handler]]]:
    """A plain HTTP server on loopback whose status and body a test sets."""
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tcp_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP listener that accepts and says nothing; the test closes or keeps connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def failure(url: str, timeout: float = 5.0) -> str:
    with pytest.raises(BackendUnavailable) as info:
        asyncio.run(probe_rest(url, "restadmin", SECRET, timeout=timeout))
    message = str(info.value)
    assert SECRET not in message
    assert "\n" not in message
    return message


def test_probe_refused() -> None:
    """Nothing listening: "connection refused", naming host and port."""
    port = free_port()
    assert failure(f"http://127.0.0.1:{port}/3.1") == (
        f"connection refused by 127.0.0.1:{port}: is Mailman core running, and is "
        "[webservice] hostname/port right?")


def test_probe_wrong_api_version(http_server: tuple[int, type[_Handler]]) -> None:
    """A 404 for /3.1/system/versions: no REST API 3.1 on that port."""
    port, _ = http_server
    assert failure(f"http://127.0.0.1:{port}/3.1").startswith(
        f"http://127.0.0.1:{port}/3.1 answered 404 Not Found for /3.1/system/versions: "
        "no REST API 3.1 here")


@pytest.mark.parametrize("status", [401, 403])
def test_probe_unauthorized(status: int, http_server: tuple[int, type[_Handler]]) -> None:
    """401/403: the user or password is wrong."""
    port, handler = http_server
    handler.status = status
    assert f"answered {status} " in failure(f"http://127.0.0.1:{port}/3.1")
    assert "the user or password is wrong" in failure(f"http://127.0.0.1:{port}/3.1")


def test_probe_not_mailman(http_server: tuple[int, type[_Handler]]) -> None:
    """A 200 without mailman_version is another web server."""
    port, handler = http_server
    handler.status, handler.body = 200, json.dumps({"hello": 1}).encode()
    assert "answered 200 but not as Mailman core's REST API" in failure(
        f"http://127.0.0.1:{port}/3.1")


def test_probe_tls_against_plain_http(http_server: tuple[int, type[_Handler]]) -> None:
    """https:// to a plain HTTP port: the TLS handshake fails, and use_https is named."""
    port, _ = http_server
    message = failure(f"https://127.0.0.1:{port}/3.1")
    assert message.startswith(f"TLS handshake with 127.0.0.1:{port} failed"), message
    assert "use_https" in message


def test_probe_not_http(tcp_server: tuple[int, list[socket.socket]]) -> None:
    """A port that accepts and hangs up: no HTTP answer, not Mailman's REST port."""
    port, accepted = tcp_server

    def hang_up() -> None:
        while not accepted:
            threading.Event().wait(0.01)
        accepted[0].close()

    threading.Thread(target=hang_up, daemon=True).start()
    message = failure(f"http://127.0.0.1:{port}/3.1")
    assert message.startswith(f"127.0.0.1:{port} gave no HTTP answer"), message


def test_probe_timeout(tcp_server: tuple[int, list[socket.socket]]) -> None:
    """A port that accepts and never answers: "no answer within" the timeout."""
    port, _ = tcp_server
    assert failure(f"http://127.0.0.1:{port}/3.1", timeout=0.3).startswith(
        f"no answer from 127.0.0.1:{port} within 0.3 s")


def test_webservice_repr_hides_password() -> None:
    """WebService's repr shows '***' for admin_pass."""
    ws = WebService("h", 1, False, "u", SECRET, "3.1", ())
    assert SECRET not in repr(ws)
    assert "'***'" in repr(ws)
