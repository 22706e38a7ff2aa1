"""Reliability and security acceptance tests: properties, fuzz smoke runs, hostile input,
overload, Mailman faults, nothing lost end to end, and injection/secret handling.
Figures and full-scale runs: docs/reliability.md."""
