"""``python -m hub`` is the ``wolfhub`` command."""

from hub._cli import main

main()
