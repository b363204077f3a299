"""``python -m marketcare.cli``: the same command as the ``marketcare`` script."""

from marketcare.cli import main

main()
