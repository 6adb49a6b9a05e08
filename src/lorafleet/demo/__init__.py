"""The quickstart that `make demo` runs, and its sample data."""
