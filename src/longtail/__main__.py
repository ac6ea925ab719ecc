"""`python -m longtail` (and `torchrun -m longtail`) runs the command line."""

from longtail.cli import main

raise SystemExit(main())
