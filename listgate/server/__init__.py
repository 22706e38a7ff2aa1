"""The asyncio layer: listeners, per-connection pumps, limits, timeouts, drain."""
