"""`lorafleet adapters restamp`: move a format-1 artifact to the current base fingerprint, after checking it.

An artifact written before fingerprints covered weight values carries a scheme-1 base fingerprint
(config, tensor shapes, tokenizer), which push refuses. Re-training is the sure way forward; when
the adapter is known to have been trained on the registry's base, restamp is the quick one:

    stage the artifact → its scheme-1 fingerprint must equal the registry base's → build the
    format-2 manifest (current fingerprint, `restamped_at` set) → every push check must pass with it
    → write it into the artifact's folder (atomically)

It cannot check which weights the adapter was trained on — nothing in an adapter records that —
so `restamped_at` marks the manifest: the binding now rests on the word of whoever ran it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from lorafleet.artifact import FORMAT_VERSION, Manifest, write_manifest
from lorafleet.registry import intake, store
from lorafleet.registry.errors import ArtifactRejected
from lorafleet.registry.push import check_staged, registry_base, stage_artifact, staged_manifest


def restamp(folder: Path) -> tuple[Manifest, Manifest]:
    """Rewrite `folder/lorafleet.json` as format 2 for the registry's base; returns (old, new) manifests.

    Raises ArtifactRejected when the artifact is already current, was trained on another
    architecture or tokenizer (its scheme-1 fingerprint differs), or fails any push check; the
    folder is unchanged then. Raises BaseModelMismatch like push does.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactRejected(str(folder), [f"{folder} is not a folder"])
    with store.store_lock(exclusive=False), intake.staging_area(store.staging_dir()) as area:
        staged = stage_artifact(folder, area)
        old = staged_manifest(folder, staged)
        if old.format_version >= FORMAT_VERSION:
            raise ArtifactRejected(str(folder), [f"its manifest is already format_version {old.format_version}: nothing to restamp"])
        base = registry_base(old)
        if old.base_fingerprint != base.fingerprints.legacy_model:
            raise ArtifactRejected(str(folder), [
                f"its base_fingerprint {old.base_fingerprint} is not the registry's base model {base.record.name} even "
                f"under the earlier fingerprint scheme ({base.fingerprints.legacy_model}): it was trained on another "
                "model, so restamping would bind it to the wrong base; train it on the registry's base"
            ])
        new = old.model_copy(update={
            "format_version": FORMAT_VERSION, "base_fingerprint": base.fingerprints.model,
            "restamped_at": datetime.now(timezone.utc),
        })
        problems = check_staged(staged, new, base)
        if problems:
            raise ArtifactRejected(str(folder), problems)
    write_manifest(folder, new)
    return old, new
