"""`python -m aol` is the `aol` command."""

from aol.cli import main

main()
