"""listgate: decide Mailman 3 list postings at SMTP RCPT time (milter and policy server)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
