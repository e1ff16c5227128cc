"""``python -m workers.cli``: how the supervisor starts workers, beat and the API."""

from workers.cli.main import main

main()
