from flows.cli import entry_point

entry_point()
