"""``python -m rscompress``: the CLI (also what torchrun launches with ``-m rscompress``)."""

from rscompress.cli import main

raise SystemExit(main())
