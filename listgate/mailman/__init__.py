"""Mailman 3 as a source of facts: its REST API and the backend that reads it.

``client`` is Mailman core's REST API as typed records (the only module that imports
mailmanclient and httpx); ``backend`` turns those records into the facts the engine
reads (recipients, bans, ``@list`` references, linked members), through the generic fact
cache of ``listgate.facts``; ``directory`` keeps the list directory and its copy on disk.
Mailman's posting rules themselves are ``listgate.decision.rules``.

Invariants: importing this package imports nothing else; ``listgate.facts.registry``
imports its modules only when a Mailman backend is built.
"""
