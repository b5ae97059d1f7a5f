"""The HA gateway: auth, rate limits, upstream balancing and the usage ledger in front of the servers.

A scoring request's files are its flow: ``authenticate`` → ``admit`` → ``distribute`` (``forward``,
``split``) → ``charge``, run in that order by ``pipeline`` and reached over HTTP through ``routes``;
``components`` wires them (the only module that knows how). Each concern is its own module with its own
tests. Nothing is re-exported here so that importing the package pulls in no optional driver.
"""

__all__: list[str] = []
