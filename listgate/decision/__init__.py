"""The decision core: who may post to which list, decided the way Mailman would.

Pure except ``gate``: no I/O, no clock, no asyncio below it. ``model`` holds the request
and decision types, ``recipients`` turns a recipient into a list, ``senders`` the sender
forms Mailman reads (and other spellings of an envelope sender), ``rules`` Mailman's
posting chain over facts, ``facts`` the contract with fact sources (``ListFacts``,
``FactSource``, ``PENDING``), ``engine`` one decision from facts, and ``gate`` asks a
fact source and applies the failure policy and the bypass, the one place that does.
"""
