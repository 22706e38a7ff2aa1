"""Front ends: translate a wire protocol's events into ``PostingRequest``s and a
``Decision`` back into that protocol's reply. Pure: no sockets, no asyncio."""
