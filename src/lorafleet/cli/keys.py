"""`lorafleet keys ...`: the gateway's API keys (stored in the registry as salted scrypt hashes)."""

from __future__ import annotations

import json

import typer

from lorafleet.cli.adapters import _registry
from lorafleet.cli.common import JsonOption, console, err_console, fail

keys_app = typer.Typer(help="API keys for the gateway: one per tenant or client, with its aliases and limits.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the key belongs to."),
    aliases: str | None = typer.Option(None, "--aliases", help="Comma-separated aliases the key may use."),
    all_aliases: bool = typer.Option(False, "--all", help="The key may use every alias."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute (token bucket; default unlimited)."),
    tpm: int | None = typer.Option(None, "--tpm", help="Prompt + completion tokens per minute (default unlimited)."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="Requests in flight at once (default unlimited)."),
    admin: bool = typer.Option(False, "--admin", help="An admin key: may call /admin routes (every alias unless --aliases)."),
    as_json: bool = JsonOption,
) -> None:
    """Create a key and print it once: only its salted hash is stored, it cannot be shown again."""
    from lorafleet.registry.keys import create_key

    if aliases is not None and all_aliases:
        fail("give --aliases A,B or --all, not both")
    if aliases is None and not all_aliases and not admin:
        fail("say which aliases the key may use: --aliases A,B or --all")
    names = [a.strip() for a in aliases.split(",") if a.strip()] if aliases is not None else None
    key, token = _registry(create_key, tenant, names, rpm, tpm, max_concurrency, admin)
    if as_json:
        print(json.dumps({**key.public(), "key": token}, indent=2))
        return
    print(token)
    err_console.print(f"key {key.key_id} for tenant {key.tenant} ({'admin, ' if key.admin else ''}aliases: "
                      f"{', '.join(key.aliases) if key.aliases is not None else 'all'}). Store it now: it is not shown again.",
                      highlight=False, markup=False)


@keys_app.command("list")
def keys_list(as_json: bool = JsonOption) -> None:
    """Every key (never its secret): tenant, aliases, limits, admin, revoked."""
    from rich.console import Console
    from rich.table import Table

    from lorafleet.registry.keys import list_keys

    keys = _registry(list_keys)
    if as_json:
        print(json.dumps([k.public() for k in keys], indent=2))
        return
    table = Table(title=f"{len(keys)} API key(s)")
    for column in ("key id", "tenant", "aliases", "rpm", "tpm", "concurrency", "admin", "created", "revoked"):
        table.add_column(column)
    for k in keys:
        p = k.public()
        table.add_row(k.key_id, k.tenant, ",".join(k.aliases) if k.aliases is not None else "all", _limit(k.rpm), _limit(k.tpm),
                      _limit(k.max_concurrency), "yes" if k.admin else "", p["created_at"][:19], (p["revoked_at"] or "")[:19])
    (console if console.is_terminal else Console(width=160)).print(table)  # not 80 columns when piped


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (from `keys list`) or the whole key."), as_json: bool = JsonOption) -> None:
    """Revoke a key: every gateway on this registry refuses it within about a second."""
    from lorafleet.registry.keys import revoke_key, split_token

    parts = split_token(key_id)
    key = _registry(revoke_key, parts[0] if parts else key_id)
    if as_json:
        print(json.dumps(key.public(), indent=2))
        return
    console.print(f"revoked {key.key_id} (tenant {key.tenant}) at {key.revoked_at.isoformat() if key.revoked_at else '?'}", highlight=False)


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)
