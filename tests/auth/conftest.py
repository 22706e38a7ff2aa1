"""Fixtures for the authentication tests: the shared ``auth_dns`` (tests/conftest.py)."""

from __future__ import annotations

from dns_server import MEMBER, AuthDns

__all__ = ["MEMBER", "AuthDns"]
