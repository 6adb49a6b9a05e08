"""Who may open the console: the one place the console asks the gateway's key rules.

PLACEHOLDER until the gateway's admin keys land (issue 14): the admin key is read from
LORAFLEET_CONSOLE_ADMIN_KEY, and authentication is on whenever the fleet config has `api_keys`
(tenant keys) or that variable is set.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from lorafleet.serve.proxy import GatewayState
from lorafleet.serve.console.session import OPEN_SUBJECT


def auth_enabled(state: GatewayState) -> bool:
    """False on a gateway that runs without authentication (the console then says so in a banner)."""
    return bool(state.config.api_keys) or bool(os.environ.get("LORAFLEET_CONSOLE_ADMIN_KEY"))


def admin_subject(state: GatewayState, key: str) -> str | None:
    """The session subject for a valid admin key (`admin:<id>`), None for any other key, tenant keys included."""
    admin = os.environ.get("LORAFLEET_CONSOLE_ADMIN_KEY")
    if not admin or not secrets.compare_digest(key.encode(), admin.encode()):
        return None
    return "admin:" + hashlib.sha256(admin.encode()).hexdigest()[:12]


def subject_valid(state: GatewayState, subject: str) -> bool:
    """Whether a session's subject may still use the console (its admin key not revoked; auth unchanged)."""
    if not auth_enabled(state):
        return subject == OPEN_SUBJECT
    admin = os.environ.get("LORAFLEET_CONSOLE_ADMIN_KEY")
    return bool(admin) and subject == "admin:" + hashlib.sha256(admin.encode()).hexdigest()[:12]
