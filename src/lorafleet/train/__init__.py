"""Prepared dataset in, adapter artifact out: preflight checks, the training loop, the manifest."""
