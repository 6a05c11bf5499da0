"""The hub's exceptions: one tree, named by condition.

::

    HubError                         root of everything the hub raises on purpose
    ├── ValidationError (ValueError) bad input; names the argument; nothing was written
    ├── BackendUnavailable           Redis / InfluxDB / SQLite could not serve the call in time
    └── HubClosed                    the hub is closing or closed; open a new one

Each backend's own exceptions are mapped to these exactly once, in the backend
module that talks to it (``actors/backends/``), always chained (``raise ... from exc``).
The engine raises subclasses of BackendUnavailable that say more (Redis refused a
command, InfluxDB refused a query, a Redis Cluster master is down...): catch
BackendUnavailable. Nothing else leaves a public call (tests/test_error_tree.py).
"""

from __future__ import annotations

__all__ = ["BackendUnavailable", "HubClosed", "HubError", "ValidationError"]


class HubError(Exception):
    """Root of all errors raised by wolfinch-hub."""


class ValidationError(HubError, ValueError):
    """An argument (or config key) is invalid; nothing was written.

    ``argument`` holds the name of the offending argument or config key.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class BackendUnavailable(HubError):
    """A backend (``backend`` is 'redis', 'influxdb' or 'sqlite') cannot serve the call."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"{backend}: {message}")


class HubClosed(HubError):
    """The hub was closed (or is closing); calls are refused."""
