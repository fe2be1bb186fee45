"""The `streetlib` command line (`commands`) and its `analyze` command."""
