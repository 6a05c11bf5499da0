"""The hub's exceptions (defined in :mod:`hubdomain.errors`, drawn there as a tree)::

    HubError                         root of everything the hub raises on purpose
    ├── ValidationError (ValueError) bad input; names the argument; nothing was written
    ├── BackendUnavailable           Redis / InfluxDB / SQLite could not serve the call in time
    └── HubClosed                    the hub is closing or closed; open a new one
"""

from __future__ import annotations

from hubdomain.errors import BackendUnavailable, HubClosed, HubError, ValidationError

__all__ = ["BackendUnavailable", "HubClosed", "HubError", "ValidationError"]

for _error in (BackendUnavailable, HubClosed, HubError, ValidationError):
    _error.__module__ = __name__  # tracebacks name the public path
