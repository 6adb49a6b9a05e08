"""`python -m lorafleet.cli ...` runs the command line (tests use it to kill a real process)."""

from lorafleet.cli import app

app()
