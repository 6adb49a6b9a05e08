"""Who may open the console: the gateway's own keys (lorafleet.serve.auth), asked in one place.

The login form's key is checked by the same `AuthState.principal` that `require_admin` uses for the
admin routes, and must be an admin key; a tenant key is refused like an unknown one. A session
remembers the key id it was opened with, and every request re-checks that id against the key
snapshot the gateway re-reads each `registry_poll_s`: revoking the admin key ends its console
sessions as it ends its API access, on every gateway sharing the registry.
"""

from __future__ import annotations

from lorafleet.serve.console.session import OPEN_SUBJECT
from lorafleet.serve.errors import GatewayError
from lorafleet.serve.proxy import GatewayState

ADMIN_PREFIX = "admin:"


def auth_enabled(state: GatewayState) -> bool:
    """False when the gateway serves without keys (`--auth none`, or `auto` before the first key): the console says so."""
    return state.auth.required


async def admin_subject(state: GatewayState, key: str) -> str | None:
    """The session subject (`admin:<key id>`) for a valid admin key; None for anything else, tenant keys included."""
    try:
        principal = await state.auth.principal(f"Bearer {key}")
    except GatewayError:
        return None
    if not principal.admin or principal.key_id is None:
        return None
    return ADMIN_PREFIX + principal.key_id


def subject_valid(state: GatewayState, subject: str) -> bool:
    """Whether a session's subject may use the console now: its admin key still exists and is not revoked.

    Without authentication every caller is an admin, so any session the gateway signed is valid; a session
    opened that way (`open`) ends as soon as keys become required.
    """
    if not auth_enabled(state):
        return True
    if subject == OPEN_SUBJECT or not subject.startswith(ADMIN_PREFIX):
        return False
    key = state.auth.snapshot.keys.get(subject.removeprefix(ADMIN_PREFIX))
    return key is not None and key.admin


def tenant_of(state: GatewayState, subject: str) -> str:
    """The tenant a session acts for in the request log: its admin key's, or `anonymous` without keys."""
    key = state.auth.snapshot.keys.get(subject.removeprefix(ADMIN_PREFIX)) if subject.startswith(ADMIN_PREFIX) else None
    return key.tenant if key is not None else "anonymous"
