"""The HA gateway: auth, rate limits, upstream balancing and the usage ledger in front of the servers.

Each concern is its own module (``db``, ``keys``, ``ledger``, ...) with its own tests; the app factory
composes them. Nothing is re-exported here so that importing the package pulls in no optional driver.
"""

__all__: list[str] = []
