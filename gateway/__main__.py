"""``python -m gateway``: the same as the ``identity-gateway`` command."""

from gateway.app.cli import main

raise SystemExit(main())
