"""``python -m services.cli``: the ``agentbus`` command."""

from services.cli import main

main()
