"""The typer command-line interface: parses options, calls the core, maps errors to exit codes."""
