"""`python -m spamd` is the `spamd` command."""

from spamd.cli import main

main()
