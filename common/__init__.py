"""What the daemon and the handlers both use: the clients file, the clock, the version,
HTTP, mail and webhook sending.

Imports nothing of `daemon` or `handlers`: the arrows point daemon → handlers → common
and daemon → common.
"""

__version__ = "0.1.0"
