"""Registry commands as library calls, on SQLite and PostgreSQL: push, list, show, rm, aliases, gc."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from lorafleet.registry import db, service, store
from lorafleet.registry.errors import BaseModelMismatch, InUse, InvalidName, InvalidSpec, NotFound, NothingToRollBack
from lorafleet.registry.intake import remove_tree
from lorafleet.registry.push import init_base, push

pytestmark = pytest.mark.usefixtures("registry_backend")


def _content_dirs() -> list[str]:
    root = store.store_dir()
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def test_schema_is_migrated_and_sqlite_uses_wal(registry_backend: str) -> None:
    engine = db.connect()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalar_one() == db.SCHEMA_VERSION
        if registry_backend == "sqlite":
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    db.run_transaction(engine, db.migrate)  # migrating again is a no-op
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar_one() == 1


def test_init_pins_the_base_and_refuses_another(tiny_model: Path, embedded_model: Path) -> None:
    base = init_base(str(tiny_model))
    assert base.name == str(tiny_model.resolve()) and len(base.model_fingerprint) == 64
    assert init_base(str(tiny_model)).model_fingerprint == base.model_fingerprint  # idempotent
    with pytest.raises(BaseModelMismatch, match="one registry serves one base model"):
        init_base(str(embedded_model))
    with pytest.raises(BaseModelMismatch, match="unknown model"):
        init_base("no-such-model")


def test_first_push_pins_the_artifacts_base(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    assert push(make_artifact(), "support").ref == "support@v1"
    from lorafleet.registry.push import registry_base

    assert registry_base()[0].name == str(tiny_model.resolve())


def test_first_push_with_an_unresolvable_base_asks_for_init(make_artifact: Callable[..., Path]) -> None:
    from registry_artifacts import reseal

    artifact = make_artifact()
    reseal(artifact, base_model="/nowhere/model")
    with pytest.raises(BaseModelMismatch, match="lorafleet adapters init"):
        push(artifact, "support")
    assert service.list_adapters() == []


def test_push_list_show_rm(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    first, second = make_artifact(seed=0), make_artifact(seed=1)
    assert push(first, "support").ref == "support@v1"
    assert push(second, "support").ref == "support@v2"
    assert push(first, "billing").ref == "billing@v1"
    listed = service.list_adapters()
    assert [row.ref for row in listed] == ["billing@v1", "support@v1", "support@v2"]
    assert listed[0].content_sha256 == listed[1].content_sha256 != listed[2].content_sha256

    detail = service.show("support")  # latest version
    assert detail.summary.ref == "support@v2"
    assert detail.manifest == json.loads((second / "lorafleet.json").read_text())
    assert detail.checksums["adapter_model.safetensors"] == detail.manifest["files"]["adapter_model.safetensors"]
    assert [m["step"] for m in detail.metrics] == [1, 2, 3]
    assert (Path(detail.content_path) / "adapter_model.safetensors").read_bytes() == (second / "adapter_model.safetensors").read_bytes()
    assert service.show("support@v1").summary.content_sha256 == listed[1].content_sha256

    removed = service.remove("support@v1")
    assert removed.ref == "support@v1"
    assert [row.ref for row in service.list_adapters()] == ["billing@v1", "support@v2"]
    with pytest.raises(NotFound, match="no adapter version support@v1"):
        service.show("support@v1")
    with pytest.raises(NotFound):
        service.remove("support@v1")
    with pytest.raises(InvalidSpec, match="names no version"):
        service.remove("support")
    # Versions are immutable: a removed number is never given to new content.
    assert push(make_artifact(seed=2), "support").ref == "support@v3"


def test_identical_content_is_stored_once(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    a = push(make_artifact(), "support")
    b = push(make_artifact(), "other")  # a second copy of the same files
    assert not a.content_reused and b.content_reused
    assert a.version.content_sha256 == b.version.content_sha256
    assert _content_dirs() == [a.version.content_sha256]


def test_aliases_canary_promote_rollback_history(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    push(make_artifact(seed=0), "support")
    push(make_artifact(seed=1), "support")
    push(make_artifact(seed=2), "support")

    rev = service.set_alias("chat", ["support@v1"], fallback_prompt="You are a support agent.")
    assert (rev.revision, rev.routes[0].weight) == (1, 100)
    service.set_alias("chat", ["support@v1=90", "support@v2=10"])
    aliases_of = {row.ref: row.aliases for row in service.list_adapters()}
    assert aliases_of == {"support@v1": ["chat=90"], "support@v2": ["chat=10"], "support@v3": []}
    assert service.show("support@v2").summary.aliases == ["chat=10"]
    service.promote("chat", "support@v3")

    back = service.rollback("chat")  # to the canary
    assert [(r.ref, r.weight) for r in back.routes] == [("support@v1", 90), ("support@v2", 10)]
    back = service.rollback("chat")  # further back: all on v1
    assert [(r.ref, r.weight) for r in back.routes] == [("support@v1", 100)]
    with pytest.raises(NothingToRollBack):
        service.rollback("chat")

    revisions = service.history("chat")
    assert [r.action for r in revisions] == ["set", "set", "promote", "rollback", "rollback"]
    assert [r.revision for r in revisions] == [1, 2, 3, 4, 5]
    assert all(a.created_at <= b.created_at for a, b in zip(revisions, revisions[1:]))
    assert {r.fallback_prompt for r in revisions} == {"You are a support agent."}  # kept across changes
    assert service.set_alias("chat", ["support@v2"], fallback_prompt="new").fallback_prompt == "new"


def test_alias_refusals(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    push(make_artifact(), "support")
    with pytest.raises(NotFound, match="support@v7"):
        service.set_alias("chat", ["support@v1=50", "support@v7=50"])
    with pytest.raises(InvalidSpec, match="sum to"):
        service.set_alias("chat", ["support@v1=50"])
    for bad in ["../x", "a/b", "\u0441hat"]:
        with pytest.raises(InvalidName):
            service.set_alias(bad, ["support@v1"])
    with pytest.raises(NotFound, match="no alias"):
        service.history("chat")  # the failed sets left no trace


def test_rm_is_refused_while_an_alias_routes_to_the_version(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    push(make_artifact(seed=0), "support")
    push(make_artifact(seed=1), "support")
    service.set_alias("chat", ["support@v1=90", "support@v2=10"])
    with pytest.raises(InUse, match="chat=10"):
        service.remove("support@v2")
    service.promote("chat", "support@v1")
    assert service.remove("support@v2").ref == "support@v2"  # no longer routed
    with pytest.raises(NotFound, match="support@v2"):
        service.rollback("chat")  # the canary it would restore routes to a removed version
    assert service.history("chat")[-1].action == "promote"


def test_gc_removes_only_unreferenced_content(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    kept = push(make_artifact(seed=0), "support")
    dropped = push(make_artifact(seed=1), "support")
    shared = push(make_artifact(seed=0), "billing")  # same content as `kept`
    (store.store_dir() / store.STAGING / "leftover").mkdir(parents=True)
    service.remove(dropped.ref)
    service.remove(shared.ref)
    report = service.gc()
    assert report.removed == [dropped.version.content_sha256]
    assert report.kept == 1 and report.staging_removed == 1
    assert _content_dirs() == [kept.version.content_sha256]
    assert (Path(service.show("support@v1").content_path) / "lorafleet.json").is_file()
    assert service.gc().removed == []


def test_damaged_store_content_is_replaced_on_push(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    first = push(make_artifact(), "support")
    damaged = first.content_path / "adapter_model.safetensors"
    damaged.chmod(0o644)  # stored files are sealed read-only; damage comes from outside lorafleet
    damaged.write_bytes(b"damaged")
    second = push(make_artifact(), "support")
    assert not second.content_reused
    assert (second.content_path / "adapter_model.safetensors").read_bytes() == (make_artifact() / "adapter_model.safetensors").read_bytes()
    remove_tree(second.content_path)
    assert push(make_artifact(), "support").ref == "support@v3"
