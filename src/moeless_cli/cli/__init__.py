"""Command-line interface: one thin file per command, each a shell over library code."""
