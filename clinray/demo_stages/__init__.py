"""Demo stages, one module each (see :mod:`clinray.demo` for the contract)."""
