"""Every shipped file under deploy/ (and the packaged example config) is loaded by the tool
that consumes it: Postfix (``postfix check``, ``postconf -n``), systemd
(``systemd-analyze verify``), m4 (sendmail's .mc) and ``listgate config check``.

A missing tool is a failure with an install hint, never a skip.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    INSTALL_HINT,
    REPO_ROOT,
    PostfixInstance,
    find_binary,
    free_port,
    listgate_command,
    traversable_tmpdir,
)

DEPLOY = REPO_ROOT / "deploy"
MILTER_SNIPPET = DEPLOY / "postfix" / "main.cf.snippet"
POLICY_SNIPPET = DEPLOY / "postfix" / "main.cf.policy-snippet"
UNIT = DEPLOY / "systemd" / "listgate.service"
SENDMAIL_MC = DEPLOY / "sendmail" / "listgate.mc"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


# --------------------------------------------------------------------------- Postfix


def main_cf_params(text: str) -> dict[str, str]:
    """The ``name = value`` settings of a main.cf text, continuation lines joined as
    Postfix does (comment and blank lines skipped, a line starting with whitespace
    continues the previous one)."""
    params: dict[str, str] = {}
    name: str | None = None
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            assert name is not None, f"continuation line before any parameter: {raw!r}"
            params[name] = f"{params[name]} {stripped}".strip()
            continue
        key, eq, value = raw.partition("=")
        assert eq, f"not a 'name = value' line: {raw!r}"
        name = key.strip()
        params[name] = value.strip()
    return params


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    """A private Postfix instance (created, never started); removed afterwards."""
    base = traversable_tmpdir("lg-e2e-deploy-")
    try:
        PostfixInstance(base, [], free_port()).create()
        yield base / "etc"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def install_snippet(config_dir: Path, snippet: Path, replace: dict[str, str]) -> dict[str, str]:
    """Append *snippet* (with *replace* applied) to the instance's main.cf, after dropping
    the base settings it sets (so Postfix warns about no duplicate); return its settings."""
    text = snippet.read_text()
    for old, new in replace.items():
        assert old in text, f"{snippet.name} no longer mentions {old}"
        text = text.replace(old, new)
    params = main_cf_params(text)
    main_cf = config_dir / "main.cf"
    kept = [
        line for line in main_cf.read_text().splitlines()
        if line.partition("=")[0].strip() not in params
    ]
    main_cf.write_text("\n".join(kept) + f"\n\n# ---- {snippet.name}\n" + text)
    return params


def postfix_check(config_dir: Path) -> subprocess.CompletedProcess[str]:
    """``postfix -c DIR check`` under ``script -qec`` (Postfix prints fatal errors only to
    a terminal)."""
    cmd = f"{shlex.quote(find_binary('postfix'))} -c {shlex.quote(str(config_dir))} check"
    return subprocess.run(
        [find_binary("script"), "-qec", cmd, "/dev/null"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )


def postconf_n(config_dir: Path) -> tuple[dict[str, str], str]:
    """``postconf -c DIR -n``: the explicit settings, and what it printed on stderr."""
    proc = subprocess.run(
        [find_binary("postconf"), "-c", str(config_dir), "-n"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, f"postconf -n failed (rc {proc.returncode}):\n{proc.stderr}"
    settings = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" = ")
        settings[key.rstrip(" =")] = value
    return settings, proc.stderr


def complaints(output: str, params: dict[str, str]) -> list[str]:
    """Lines of Postfix output that are fatal, or warnings naming one of *params*."""
    names = re.compile(r"\b(" + "|".join(map(re.escape, params)) + r")\b")
    return [
        line for line in output.splitlines()
        if "fatal" in line or ("warning" in line and names.search(line))
    ]


def assert_snippet_loads(config_dir: Path, params: dict[str, str]) -> dict[str, str]:
    """postfix check passes without complaint about the snippet; every snippet setting is
    in postconf -n as written; return postconf -n's settings."""
    check = postfix_check(config_dir)
    output = check.stdout + check.stderr
    assert check.returncode == 0, f"postfix check failed (rc {check.returncode}):\n{output}"
    assert complaints(output, params) == [], output
    settings, stderr = postconf_n(config_dir)
    assert complaints(stderr, params) == [], stderr
    for name, value in params.items():
        assert settings.get(name, "") == value, (name, settings.get(name))
    return settings


def test_postfix_milter_snippet_loads(postfix_dir: Path) -> None:
    """main.cf.snippet passes postfix check; postconf -n shows tempfail, protocol 6, timeouts."""
    milter = f"inet:127.0.0.1:{free_port()}"
    params = install_snippet(postfix_dir, MILTER_SNIPPET, {"inet:127.0.0.1:8890": milter})
    settings = assert_snippet_loads(postfix_dir, params)
    assert settings["smtpd_milters"] == milter
    assert settings["non_smtpd_milters"] == ""
    assert settings["milter_default_action"] == "tempfail"
    assert settings["milter_protocol"] == "6"
    assert settings["milter_connect_timeout"] == "10s"
    assert settings["milter_command_timeout"] == "10s"


def test_postfix_policy_snippet_loads(postfix_dir: Path) -> None:
    """main.cf.policy-snippet passes postfix check; postconf -n shows check_policy_service."""
    service = f"inet:127.0.0.1:{free_port()}"
    params = install_snippet(postfix_dir, POLICY_SNIPPET, {"inet:127.0.0.1:8891": service})
    settings = assert_snippet_loads(postfix_dir, params)
    restrictions = [r.strip() for r in settings["smtpd_recipient_restrictions"].split(",")]
    assert restrictions[-1] == f"check_policy_service {service}", restrictions
    assert "reject_unauth_destination" in restrictions
    assert settings["smtpd_policy_service_default_action"].startswith("451 4.")


# --------------------------------------------------------------------------- systemd


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (all sections; comments skipped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """listgate.service (ExecStart pointed at the venv's listgate) passes systemd-analyze verify."""
    if not Path(SYSTEMD_ANALYZE).is_file():
        pytest.fail(f"{SYSTEMD_ANALYZE} not found (Debian package systemd): {INSTALL_HINT}",
                    pytrace=False)
    listgate = Path(sys.executable).parent / "listgate"  # the venv running the tests
    assert listgate.is_file(), f"no {listgate}: {INSTALL_HINT}"
    text = UNIT.read_text()
    shipped = "ExecStart=/opt/listgate/bin/listgate "
    assert text.count(shipped) == 1, "ExecStart no longer names /opt/listgate/bin/listgate"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(shipped, f"ExecStart={listgate} "))
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"systemd-analyze verify failed (rc {proc.returncode}):\n{output}"
    about_unit = [ln for ln in output.splitlines() if UNIT.name in ln or str(unit) in ln]
    assert about_unit == [], output


def test_systemd_unit_is_hardened() -> None:
    """listgate.service is Type=notify, runs as a user, and sets the hardening options."""
    s = unit_settings(UNIT.read_text())
    assert s.get("Type") == ["notify"]
    assert len(s.get("User", [])) == 1, s.get("User")
    assert s["User"][0] not in ("", "root"), s["User"]
    assert s.get("RuntimeDirectory") == ["listgate"]
    assert s.get("NoNewPrivileges") == ["yes"]
    assert s.get("ProtectSystem") == ["strict"]
    assert s.get("PrivateTmp") == ["yes"]


# --------------------------------------------------------------------------- sendmail


def test_sendmail_mc_defines_the_filter(tmp_path: Path) -> None:
    """listgate.mc through m4 calls INPUT_MAIL_FILTER once: S=inet:8890@127.0.0.1, F=T, T=..."""
    stub = tmp_path / "stub.m4"
    stub.write_text("define(`INPUT_MAIL_FILTER', `FILTER[`$1']ARGS[`$2']\n')dnl\n")
    proc = subprocess.run(
        [find_binary("m4"), str(stub), str(SENDMAIL_MC)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, f"m4 rc {proc.returncode}:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected only the filter line (comments must be dnl):\n{proc.stdout}"
    m = re.fullmatch(r"FILTER\[(.*)\]ARGS\[(.*)\]", lines[0])
    assert m, lines[0]
    assert m.group(1) == "listgate"
    fields = dict(f.strip().split("=", 1) for f in m.group(2).split(","))
    assert fields["S"] == "inet:8890@127.0.0.1"
    assert fields["F"] == "T"
    timeouts = dict(t.split(":", 1) for t in fields["T"].split(";"))
    assert timeouts == {"C": "10s", "S": "10s", "R": "10s", "E": "5m"}, timeouts


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "config",
    [DEPLOY / "listgate.toml.example", REPO_ROOT / "listgate" / "data" / "example.toml"],
    ids=["deploy-example", "packaged-example"],
)
def test_example_config_checks(config: Path) -> None:
    """``listgate config check`` accepts the shipped example config (exit 0)."""
    proc = subprocess.run(
        [*listgate_command(), "config", "check", str(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, f"rc {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.splitlines()[0].endswith(": OK"), proc.stdout
