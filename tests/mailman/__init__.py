"""Tests that run against a real GNU Mailman 3 core started by the test suite.

pytest puts tests/ on sys.path (this package is imported as "mailman"), so the harness
is imported as the top-level module "mailman_harness".
"""
