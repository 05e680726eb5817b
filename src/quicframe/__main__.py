"""``python -m quicframe``: the same as the ``quicframe`` command."""

from .cli import main

raise SystemExit(main())
