"""Unit tests: pure functions, backends and config, no sockets."""
