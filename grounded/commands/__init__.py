"""Subcommands of the `grounded` command line, one module each."""
