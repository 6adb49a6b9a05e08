"""Push checks: the name grammar, and one crafted bad artifact per refusal, each pushed for real."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.registry import checks, service, store
from lorafleet.registry.errors import ArtifactRejected, InvalidName
from lorafleet.registry.push import init_base, push
from registry_artifacts import edit_config, reseal

BAD_NAMES = {
    "../x": "path separator",
    "/abs": "path separator",
    "a/b": "path separator",
    "a\x00b": "control character",
    "\u0455upport": "CYRILLIC SMALL LETTER DZE",  # looks like "support"
    "supp\u043ert": "CYRILLIC SMALL LETTER O",
    "..": "'..'",
    "a..b": "'..'",
    "": "does not match",
    "Support": "does not match",
    "-x": "does not match",
    ".hidden": "does not match",
    "x" * 64: "does not match",
    "a b": "does not match",
}


@pytest.mark.parametrize("name, reason", BAD_NAMES.items(), ids=[repr(n)[:20] for n in BAD_NAMES])
def test_bad_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    problems = checks.name_problems(name)
    assert problems and reason in " ".join(problems)


@pytest.mark.parametrize("name", ["support", "a", "0", "x.y_z-1", "x" * 63, "llama-3.1-8b"])
def test_good_names_pass(name: str) -> None:
    assert checks.name_problems(name) == []


def test_push_with_a_bad_name_stores_nothing(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    artifact = make_artifact()
    for name in ["../x", "/abs", "a/b", "a\x00b", "\u0455upport"]:
        with pytest.raises(InvalidName):
            push(artifact, name)
    assert service.list_adapters() == []
    assert not store.store_dir().exists() or not [p for p in store.store_dir().iterdir() if not p.name.startswith(".")]


def _add_file(name: str, content: bytes = b"x") -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        (folder / name).write_bytes(content)
        reseal(folder)
    return tamper


def _symlink(folder: Path) -> None:
    os.symlink("adapter_model.safetensors", folder / "weights-link.safetensors")


def _bad_checksum(folder: Path) -> None:
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99}\n')  # after the manifest was written


def _corrupt_header(folder: Path) -> None:
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")  # header length far beyond the file
    path.write_bytes(bytes(data))
    reseal(folder)


def _claim_rank_8(folder: Path) -> None:
    """Tensors of rank 16 under a config (and manifest) that say rank 8."""
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "r": 8}))
    manifest_lora = json.loads((folder / "lorafleet.json").read_text())["lora"]
    from lorafleet.artifact import LoraSpec
    reseal(folder, lora=LoraSpec(**{**manifest_lora, "r": 8}))


REFUSALS: dict[str, tuple[dict, Callable[[Path], None], str]] = {
    "pickle .bin": ({}, _add_file("pytorch_model.bin"), "pickle-format"),
    "pickle .pt": ({}, _add_file("optimizer.pt"), "pickle-format"),
    "pickle .pkl": ({}, _add_file("state.pkl"), "pickle-format"),
    "python file": ({}, _add_file("modeling_evil.py", b"import os\n"), "Python file"),
    "auto_map": ({}, edit_config(auto_map={"AutoModel": "modeling_evil.Model"}), "auto_map"),
    "symlink": ({}, _symlink, "is a symlink"),
    "bad checksum": ({}, _bad_checksum, "metrics.jsonl: sha256 is"),
    "corrupt safetensors header": ({}, _corrupt_header, "corrupt safetensors header"),
    "wrong rank in tensors": ({"r": 16}, _claim_rank_8, "expected [8, 64]"),
    "wrong base fingerprint": ({}, lambda f: reseal(f, base_fingerprint="0" * 64), "base_fingerprint"),
    "wrong tokenizer fingerprint": ({}, lambda f: reseal(f, tokenizer_fingerprint="1" * 64), "tokenizer_fingerprint"),
    "DoRA": ({"use_dora": True}, lambda f: None, "vLLM cannot serve DoRA"),
    "unservable rank": ({"r": 1024}, lambda f: None, "rank r=1024 cannot be served"),
    "modules_to_save": ({}, edit_config(modules_to_save=["lm_head"]), "modules_to_save"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_push_refuses_each_bad_artifact(case: str, make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    options, tamper, expected = REFUSALS[case]
    init_base(str(tiny_model))
    artifact = make_artifact(**options)
    tamper(artifact)
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support")
    assert expected in str(refused.value), refused.value.problems
    assert service.list_adapters() == []
    assert not [p for p in store.store_dir().glob("*") if not p.name.startswith(".")]


def test_the_untampered_artifact_passes_every_check(make_artifact: Callable[..., Path], tiny_model: Path, tmp_path: Path) -> None:
    init_base(str(tiny_model))
    from lorafleet.registry.push import check_staged, registry_base, stage_artifact
    from lorafleet.artifact import load_manifest

    staged = stage_artifact(make_artifact(), tmp_path)
    assert check_staged(staged, load_manifest(staged.root), registry_base()) == []


def test_a_wrong_tokenizer_inside_the_artifact_is_refused(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    (artifact / "chat_template.jinja").write_text("{{ messages }}")  # manifest still claims the base's tokenizer
    reseal(artifact)
    with pytest.raises(ArtifactRejected, match="the tokenizer in the artifact"):
        push(artifact, "support")


def test_servable_problems_covers_vllm_ranks_and_modules() -> None:
    ok = {"r": 8, "target_modules": ["q_proj", "v_proj"], "use_dora": False, "bias": "none"}
    assert checks.servable_problems(ok) == []
    for r in [1, 4, 8, 320, 512]:
        assert checks.servable_problems({**ok, "r": r}) == []
    for r in [0, 513, 1024, "8"]:
        assert "cannot be served" in checks.servable_problems({**ok, "r": r})[0]
    assert "embed_tokens" in checks.servable_problems({**ok, "target_modules": ["q_proj", "embed_tokens"]})[0]
    assert "must be a list" in checks.servable_problems({**ok, "target_modules": ".*proj"})[0]
    assert "bias" in checks.servable_problems({**ok, "bias": "all"})[0]
    assert [checks.servable_max_lora_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]


def test_tensor_problems_against_base_shapes() -> None:
    base = {"model.layers.0.self_attn.q_proj.weight": ("F32", [64, 64]),
            "model.layers.0.self_attn.k_proj.weight": ("F32", [32, 64])}
    config = {"r": 4, "target_modules": ["q_proj", "k_proj"]}
    p = "base_model.model.model.layers.0.self_attn."
    good = {p + "q_proj.lora_A.weight": ("F32", [4, 64]), p + "q_proj.lora_B.weight": ("F32", [64, 4]),
            p + "k_proj.lora_A.weight": ("F32", [4, 64]), p + "k_proj.lora_B.weight": ("F32", [32, 4])}
    assert checks.tensor_problems(config, good, base) == []
    wrong_out = {**good, p + "k_proj.lora_B.weight": ("F32", [64, 4])}
    assert "expected [32, 4]" in checks.tensor_problems(config, wrong_out, base)[0]
    missing = {k: v for k, v in good.items() if "k_proj" not in k}
    assert "no tensors for target module k_proj" in checks.tensor_problems(config, missing, base)[0]
    extra = {**good, "base_model.model.lm_head.weight": ("F32", [100, 64])}
    assert "not a LoRA tensor" in checks.tensor_problems(config, extra, base)[0]
    no_base = {**good, "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": ("F32", [4, 64])}
    assert "base model does not have" in " ".join(checks.tensor_problems(config, no_base, base))
