"""`python -m digest` runs the command line."""

from digest.commands.cli import main

main()
