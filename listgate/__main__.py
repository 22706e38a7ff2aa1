"""``python -m listgate``: the same as the ``listgate`` command."""

from listgate.cli import main

raise SystemExit(main())
