"""`adapter_config.json` checked field by field: against the manifest, and against what vLLM can serve.

Every field PEFT's LoraConfig writes has one rule here:

- `COMPARED`: changes what the adapter computes and is recorded in the manifest's `lora`: must agree.
- `MUST_BE_UNSET`: a feature vLLM does not implement (it would refuse the adapter at load time, or
  compute something else) or one lorafleet cannot vouch for: refused unless unset (null, false, empty).
- `IGNORED`: provenance and training-only settings, which do not change what a trained adapter computes.
- `peft_type`, `task_type`, `bias`, `init_lora_weights`, `r`, `rank_pattern` and `target_modules`
  have their own servability rules below, mirroring vLLM's `PEFTHelper` (vLLM 0.32).

A field in none of these (a PEFT newer than this table) is accepted only when unset.
All functions are pure: they take the parsed JSON object.
"""

from __future__ import annotations

import re
from typing import Any

from lorafleet.artifact import LoraSpec

WHERE = "adapter_config.json"
# The values vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks). vLLM loads an adapter
# whose rank is at most the server's --max-lora-rank, so any rank up to the largest value is servable.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The decoder's linear projections, which vLLM's LoRA layers wrap for Llama/Qwen/Mistral families.
SERVABLE_TARGET_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# rank_pattern / alpha_pattern keys lorafleet accepts: module names, not general regular expressions
# (PEFT and vLLM match keys as regexes; a hostile one could backtrack for hours).
PATTERN_KEY = re.compile(r"[A-Za-z0-9_.]{1,200}")
# Inits that only set the starting weights; the others (PiSSA, OLoRA, CorDA, LoftQ) change the base weights.
SERVABLE_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})

# adapter_config.json field → manifest `lora` field.
COMPARED = {
    "r": "r", "lora_alpha": "alpha", "target_modules": "target_modules", "use_rslora": "use_rslora",
    "use_dora": "use_dora", "rank_pattern": "rank_pattern", "alpha_pattern": "alpha_pattern",
    "layers_to_transform": "layers_to_transform", "layers_pattern": "layers_pattern",
}
MUST_BE_UNSET = {
    "modules_to_save": "adds full copies of modules that vLLM refuses for causal language models",
    "lora_bias": "vLLM does not support LoRA bias",
    "alora_invocation_tokens": "vLLM does not support Activated LoRA (aLoRA)",
    "layer_replication": "vLLM does not support layer_replication",
    "use_bdlora": "vLLM does not support block-diagonal LoRA",
    "use_qalora": "vLLM does not support QALoRA",
    "trainable_token_indices": "trains token embeddings, which vLLM does not load from an adapter",
    "target_parameters": "adapts raw parameters (MoE experts); lorafleet serves the decoder's linear projections",
    "fan_in_fan_out": "transposed (Conv1D) weights; the bases lorafleet serves use Linear layers",
    "auto_mapping": "makes PEFT import a module named in the file",
    "megatron_config": "Megatron parallel layers are not what vLLM loads",
    "velora_config": "lorafleet cannot vouch that vLLM serves it",
    "monteclora_config": "lorafleet cannot vouch that vLLM serves it",
    "kasa_config": "lorafleet cannot vouch that vLLM serves it",
    "arrow_config": "Arrow routing over several adapters is not what vLLM computes",
}
IGNORED = frozenset({
    "peft_version", "base_model_name_or_path", "revision", "inference_mode", "lora_dropout", "exclude_modules",
    "megatron_core", "runtime_config", "qalora_group_size", "ensure_weight_tying", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config",
})
_OWN_RULES = frozenset({"peft_type", "task_type", "bias", "init_lora_weights"})


def manifest_problems(config: object, lora: LoraSpec) -> list[str]:
    """Each COMPARED field of `config` that disagrees with the manifest's `lora` (or has the wrong type)."""
    if not isinstance(config, dict):
        return [f"{WHERE}: is a JSON {type(config).__name__}, not an object"]
    problems: list[str] = []
    for field, manifest_field in COMPARED.items():
        actual, error = _normalized(field, config.get(field))
        if error:
            problems.append(f"{WHERE}: {field} is {config.get(field)!r}, {error}")
            continue
        expected, _ = _normalized(field, getattr(lora, manifest_field))
        if actual != expected:
            problems.append(f"{WHERE}: {field} is {_show(actual)}, the manifest says {_show(expected)}")
    return problems


def servable_problems(config: object) -> list[str]:
    """What vLLM would refuse (or compute differently) when loading this adapter, said now instead of at request time."""
    if not isinstance(config, dict):
        return [f"{WHERE}: is a JSON {type(config).__name__}, not an object"]
    problems: list[str] = []
    if config.get("use_dora"):
        problems.append(f"{WHERE}: use_dora is true; vLLM cannot serve DoRA adapters (retrain without DoRA)")
    problems += _rank_problems(config) + _pattern_key_problems(config)
    problems += _target_problems(config.get("target_modules"))
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(f"{WHERE}: peft_type is {peft_type!r}; vLLM serves LoRA adapters only")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(f"{WHERE}: task_type is {config['task_type']!r}; lorafleet serves causal language models (CAUSAL_LM)")
    if config.get("bias", "none") != "none":
        problems.append(f"{WHERE}: bias={config['bias']!r}; vLLM serves adapters with bias 'none' only")
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool) and not (isinstance(init, str) and init.lower() in SERVABLE_INITS):
        problems.append(
            f"{WHERE}: init_lora_weights={init!r} changes the base weights when PEFT loads the adapter, which vLLM "
            "does not do; convert it to a plain LoRA (PEFT's path_initial_model_for_weight_conversion)"
        )
    for field, reason in MUST_BE_UNSET.items():
        if _is_set(config.get(field)):
            problems.append(f"{WHERE}: {field}={_show(config[field])}: {reason}")
    known = set(COMPARED) | set(MUST_BE_UNSET) | IGNORED | _OWN_RULES
    for field in sorted(set(config) - known):
        if _is_set(config[field]):
            problems.append(
                f"{WHERE}: {field}={_show(config[field])} is a field lorafleet does not know, so it cannot tell "
                "whether vLLM computes the same thing; refusing (it is accepted when unset)"
            )
    return problems


def max_rank(config: dict) -> int | None:
    """The largest rank any module of the adapter has (`r` and `rank_pattern`), or None when `r` is unusable."""
    r = config.get("r")
    if not _is_int(r):
        return None
    pattern = config.get("rank_pattern") or {}
    ranks = [v for v in pattern.values() if _is_int(v)] if isinstance(pattern, dict) else []
    return max([r, *ranks])


def servable_max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that can hold an adapter of `rank`."""
    return next(choice for choice in VLLM_MAX_LORA_RANKS if choice >= rank)


def _rank_problems(config: dict) -> list[str]:
    limit = max(VLLM_MAX_LORA_RANKS)
    r = config.get("r")
    if not _is_int(r) or not 1 <= r <= limit:
        return [f"{WHERE}: rank r={r!r} cannot be served; vLLM serves ranks 1..{limit} (--max-lora-rank choices {list(VLLM_MAX_LORA_RANKS)})"]
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        return [f"{WHERE}: rank_pattern is {_show(pattern)}, not an object of module pattern → rank"]
    return [
        f"{WHERE}: rank_pattern gives {key!r} rank {rank!r}, which cannot be served (vLLM: integers 1..{limit})"
        for key, rank in pattern.items() if not _is_int(rank) or not 1 <= rank <= limit
    ]


def _pattern_key_problems(config: dict) -> list[str]:
    problems = []
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field)
        for key in pattern if isinstance(pattern, dict) else ():
            if not PATTERN_KEY.fullmatch(key):
                problems.append(
                    f"{WHERE}: {field} key {_show(key)} is not a module name (letters, digits, '_', '.'); lorafleet "
                    "does not accept general regular expressions there"
                )
    return problems


def _target_problems(targets: object) -> list[str]:
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        return [f"{WHERE}: target_modules must be a list of module names, not {targets!r}"]
    unservable = sorted(set(targets) - SERVABLE_TARGET_MODULES)
    if unservable:
        return [f"{WHERE}: target modules {unservable} cannot be served; use the decoder's linear projections {sorted(SERVABLE_TARGET_MODULES)}"]
    return []


def _normalized(field: str, value: Any) -> tuple[object, str | None]:
    """The comparable form of a COMPARED field's value (PEFT's defaults filled in), or an error saying what type it needs."""
    if field == "r":
        return (value, None) if _is_int(value) else (None, "not an integer")
    if field == "lora_alpha":
        return (float(value), None) if _is_number(value) else (None, "not a number")
    if field == "target_modules":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return sorted(value), None
        return None, "not a list of module names"
    if field in ("use_rslora", "use_dora"):
        value = False if value is None else value
        return (value, None) if isinstance(value, bool) else (None, "not true or false")
    if field in ("rank_pattern", "alpha_pattern"):
        value = {} if value is None else value
        check = _is_int if field == "rank_pattern" else _is_number
        if isinstance(value, dict) and all(check(v) for v in value.values()):
            return {k: (float(v) if field == "alpha_pattern" else v) for k, v in value.items()}, None
        return None, f"not an object of module pattern → {'integer' if field == 'rank_pattern' else 'number'}"
    if field == "layers_to_transform":
        value = [value] if _is_int(value) else value
        if value is None or (isinstance(value, list) and all(_is_int(v) for v in value)):
            return (sorted(value) if value else None), None
        return None, "not a layer index or a list of them"
    if field == "layers_pattern":
        value = [value] if isinstance(value, str) else value
        if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return (sorted(value) if value else None), None
        return None, "not a name or a list of names"
    raise AssertionError(f"no comparison rule for {field}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_set(value: object) -> bool:
    return value not in (None, False, "", [], {})


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
