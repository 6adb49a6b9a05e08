"""`lorafleet adapters ...`: the registry's command group."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from lorafleet.cli.common import JsonOption, ModelOption, console, err_console, fail

adapters_app = typer.Typer(help="The adapter registry: push versions, route aliases, promote and roll back.", no_args_is_help=True)
alias_app = typer.Typer(help="Route an alias (the public model name) to adapter versions.", no_args_is_help=True)
adapters_app.add_typer(alias_app, name="alias")


def _registry(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run one registry function; its RegistryError (or an unreachable database) becomes `fail`."""
    from sqlalchemy.exc import OperationalError

    from lorafleet.registry.errors import RegistryError

    try:
        return call(*args, **kwargs)
    except RegistryError as exc:
        fail(str(exc))
    except OperationalError as exc:
        fail(f"cannot use the registry database (LORAFLEET_REGISTRY_URL / LORAFLEET_HOME): {exc.orig}")


def _print_json(value: object) -> None:
    from lorafleet.registry.service import to_jsonable

    print(json.dumps(to_jsonable(value), indent=2))


def _print_revision(rev) -> None:  # type: ignore[no-untyped-def]
    from lorafleet.registry.aliases import describe_routing

    console.print(f"{rev.alias} revision {rev.revision} ({rev.action}): {describe_routing(rev.routes)}", highlight=False)


@adapters_app.command("init")
def adapters_init(model: str = ModelOption, as_json: bool = JsonOption) -> None:
    """Pin the registry's base model (one registry serves one base model)."""
    from lorafleet.cli.data import fingerprint_progress
    from lorafleet.registry.push import init_base

    with fingerprint_progress(model) as on_progress:
        base = _registry(init_base, model, on_progress)
    if as_json:
        _print_json(base)
    else:
        console.print(f"registry base model: {base.name} ({base.model_fingerprint[:12]}…)", highlight=False)


@adapters_app.command("push")
def adapters_push(
    artifact_dir: Path = typer.Argument(..., help="An artifact folder written by `lorafleet train`."),
    name: str = typer.Option(..., "--name", help="Adapter name: [a-z0-9][a-z0-9._-]{0,62}."),
    as_json: bool = JsonOption,
) -> None:
    """Check an artifact and store it as the next immutable version NAME@vN.

    The artifact is first copied into a private staging folder; every check reads that copy, and that
    copy is what the store keeps (read-only).
    """
    from lorafleet.registry.push import push

    with err_console.status(f"staging {artifact_dir}") as status:
        def show(event) -> None:  # type: ignore[no-untyped-def]
            size = sum(f.size for f in event.staged.files.values())
            status.update(f"{'checking' if event.phase == 'staged' else 'storing'} {artifact_dir} ({len(event.staged.files)} files, {size:,} bytes)")

        result = _registry(push, artifact_dir, name, on_phase=show)
    if as_json:
        _print_json({"ref": result.ref, "version": result.version, "content_path": result.content_path,
                     "content_reused": result.content_reused})
    else:
        print(result.ref)


@adapters_app.command("restamp")
def adapters_restamp(
    artifact_dir: Path = typer.Argument(..., help="An artifact folder whose lorafleet.json has format_version 1."),
    as_json: bool = JsonOption,
) -> None:
    """Give an artifact from an earlier lorafleet the current base fingerprint, after every push check.

    Earlier base fingerprints did not cover weight values, so push refuses them. Use this only for an
    adapter you know was trained on the registry's base: nothing in an adapter can prove it, and the
    manifest records `restamped_at`. Otherwise re-train.
    """
    from lorafleet.registry.restamp import restamp

    old, new = _registry(restamp, artifact_dir)
    if as_json:
        _print_json({"artifact": artifact_dir, "old_base_fingerprint": old.base_fingerprint,
                     "base_fingerprint": new.base_fingerprint, "restamped_at": new.restamped_at})
    else:
        console.print(f"restamped {artifact_dir}: base_fingerprint {old.base_fingerprint[:12]}… (scheme 1) → "
                      f"{new.base_fingerprint[:12]}… (scheme 2); push it again", highlight=False, markup=False)


@adapters_app.command("list")
def adapters_list(as_json: bool = JsonOption) -> None:
    """Every version with its creation time and the aliases that route to it."""
    from rich.table import Table

    from lorafleet.registry.service import list_adapters

    rows = _registry(list_adapters)
    if as_json:
        _print_json(rows)
        return
    table = Table("version", "created", "content", "pushed by", "aliases")
    for row in rows:
        table.add_row(row.ref, f"{row.created_at:%Y-%m-%d %H:%M:%S}", row.content_sha256[:12], escape(row.pushed_by or ""), " ".join(row.aliases))
    console.print(table)


@adapters_app.command("show")
def adapters_show(ref: str = typer.Argument(..., help="NAME@vN, or NAME for its latest version."), as_json: bool = JsonOption) -> None:
    """A version's manifest, metrics, checksums and the aliases pointing at it."""
    from rich.table import Table

    from lorafleet.registry.service import show

    detail = _registry(show, ref)
    if as_json:
        _print_json(detail)
        return
    s, m = detail.summary, detail.manifest
    console.print(f"[bold]{s.ref}[/] pushed {s.created_at:%Y-%m-%d %H:%M:%S} by {escape(s.pushed_by or '?')}; aliases: {' '.join(s.aliases) or 'none'}", highlight=False)
    console.print(f"base {m.get('base_model')}; lora {json.dumps(m.get('lora'))}; max_seq_length {m.get('max_seq_length')}", highlight=False, markup=False)
    console.print(f"metrics {json.dumps(m.get('metrics'))} ({len(detail.metrics)} lines in metrics.jsonl)", highlight=False, markup=False)
    for e in detail.evals:  # newest first; `--json` has every score
        console.print(f"eval {e.started_at} {e.data_name} via {e.model}: {e.cases}/{e.run_cases} answered, exact match "
                      f"{'-' if e.summary.exact is None else f'{e.summary.exact:.1%}'}", highlight=False, markup=False)
    table = Table("file", "sha256")
    for path, digest in sorted(detail.checksums.items()):
        table.add_row(escape(path), digest)
    console.print(table)


@adapters_app.command("rm")
def adapters_rm(ref: str = typer.Argument(..., help="NAME@vN"), as_json: bool = JsonOption) -> None:
    """Remove a version (refused while an alias routes to it); `gc` frees its files."""
    from lorafleet.registry.service import remove

    removed = _registry(remove, ref)
    _print_json(removed) if as_json else print(f"removed {removed.ref}")


@alias_app.command("set")
def alias_set(
    alias: str = typer.Argument(..., help="The alias: the model name clients ask for."),
    targets: list[str] = typer.Argument(..., help="NAME@vN[=WEIGHT] ...; weights are integers summing to 100."),
    fallback_prompt: str | None = typer.Option(None, "--fallback-prompt", help="System prompt used when the gateway answers from the base model."),
    as_json: bool = JsonOption,
) -> None:
    """Route ALIAS to one or more versions (a canary: support@v1=90 support@v2=10)."""
    from lorafleet.registry.service import set_alias

    rev = _registry(set_alias, alias, targets, fallback_prompt)
    _print_json(rev) if as_json else _print_revision(rev)


@adapters_app.command("promote")
def adapters_promote(alias: str, ref: str = typer.Argument(..., help="NAME@vN"), as_json: bool = JsonOption) -> None:
    """Send 100% of ALIAS's traffic to NAME@vN."""
    from lorafleet.registry.service import promote

    rev = _registry(promote, alias, ref)
    _print_json(rev) if as_json else _print_revision(rev)


@adapters_app.command("rollback")
def adapters_rollback(alias: str, as_json: bool = JsonOption) -> None:
    """Restore ALIAS's previous routing; repeating goes further back."""
    from lorafleet.registry.service import rollback

    rev = _registry(rollback, alias)
    _print_json(rev) if as_json else _print_revision(rev)


@adapters_app.command("history")
def adapters_history(alias: str, as_json: bool = JsonOption) -> None:
    """Every routing change of ALIAS, with its time."""
    from rich.table import Table

    from lorafleet.registry.aliases import describe_routing
    from lorafleet.registry.service import history

    revisions = _registry(history, alias)
    if as_json:
        _print_json(revisions)
        return
    table = Table("revision", "time", "action", "routing", "fallback prompt")
    for rev in revisions:
        table.add_row(str(rev.revision), f"{rev.created_at:%Y-%m-%d %H:%M:%S}", rev.action, describe_routing(rev.routes), escape(rev.fallback_prompt or ""))
    console.print(table)


@adapters_app.command("gc")
def adapters_gc(as_json: bool = JsonOption) -> None:
    """Remove stored content that no version references."""
    from lorafleet.registry.service import gc

    report = _registry(gc)
    if as_json:
        _print_json(report)
    else:
        print(f"removed {len(report.removed)} unreferenced content folder(s), kept {report.kept}")
