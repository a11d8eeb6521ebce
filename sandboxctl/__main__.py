from sandboxctl.cli.main import entry

entry()
