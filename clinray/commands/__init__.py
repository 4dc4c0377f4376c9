"""One module per ``clinray`` subcommand (see :mod:`clinray.cli` for the contract)."""
