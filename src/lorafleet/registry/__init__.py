"""Adapter registry: immutable versions in a content-addressed store, aliases with canary weights."""
