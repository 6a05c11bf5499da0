"""The ``wolfhub`` command and its tools (local servers, doctor, demo, backup), on top
of the public :mod:`hub` API."""
