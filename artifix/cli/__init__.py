"""The command line: the entry point (main), its help and reference, the command handlers, the command registry, argument validation and the dashboard server."""
