"""listgate: decide Mailman 3 list postings at SMTP RCPT time (milter and policy server)."""

# First, so that LISTGATE_PURE=1 takes effect before any compiled module is imported.
from listgate import compiled as _compiled  # noqa: F401

__version__ = "0.1.0"
__all__ = ["__version__"]
