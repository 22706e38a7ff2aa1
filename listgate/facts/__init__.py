"""Facts: where the gate learns who may post to which list.

``contract`` declares what the daemon may ask of a backend beyond the decision core's
``listgate.decision.facts.FactSource`` (cache metrics, fetch timing, reload, invalidation);
``registry`` builds the backend the configuration names; ``static`` is the static map;
``cache``, ``lookup`` and ``keyspace`` are the generic fact cache that backends with a
slow source (``listgate.mailman``) put in front of it.

Invariants: importing this package imports nothing else (no asyncio, no HTTP client);
each backend's dependencies are imported by its own module, when it is built.
"""
