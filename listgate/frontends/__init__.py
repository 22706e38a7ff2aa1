"""Front ends: one sans-IO session per wire protocol (``milter``, ``policy``). A session
takes the peer's bytes, asks for a decision on each ``PostingRequest``, and turns the
``Decision`` into that protocol's reply bytes (the contract is ``session.Session``).
Pure: no sockets, no asyncio, no clock."""
