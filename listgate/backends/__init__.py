"""Membership backends: where the gate learns who may post to which list.

Invariants: every backend satisfies ``MembershipBackend``; optional dependencies (the Mailman
REST client) are imported lazily by the module that needs them, never from here.
"""

from __future__ import annotations

from listgate.backends.base import PENDING, LookupNow, MembershipBackend, Pending
from listgate.backends.static import StaticBackend

__all__ = ["PENDING", "LookupNow", "MembershipBackend", "Pending", "StaticBackend"]
