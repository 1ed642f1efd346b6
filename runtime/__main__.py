"""``python -m runtime`` is the ``likeness`` command."""

from runtime.cli import main

main()
