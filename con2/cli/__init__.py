"""Command-line interface: argparse subcommands only; the work is done by the API."""
