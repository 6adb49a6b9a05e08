"""`lorafleet demo` (what `make demo` runs), the support-ticket triage task and its data generator."""
