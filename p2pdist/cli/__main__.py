"""``python -m p2pdist.cli``: the same as the ``p2pdist`` console script."""

from p2pdist.cli.app import main

main()
