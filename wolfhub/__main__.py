"""``python -m wolfhub``: the ``wolfhub`` command."""

from wolfhub.cli import main

main()
