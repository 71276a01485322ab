"""`python -m loom` runs the CLI."""

from loom.cli import main

main()
