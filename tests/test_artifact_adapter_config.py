"""adapter_config.json field rules: against the manifest, and against what vLLM serves (tables of cases)."""

from __future__ import annotations

import json

import pytest

from lorafleet.adapter_config import COMPARED, IGNORED, MUST_BE_UNSET, manifest_problems, max_rank, servable_problems
from lorafleet.artifact import LoraSpec

LORA = LoraSpec(r=8, alpha=16, dropout=0.05, target_modules=["v_proj", "q_proj"], use_rslora=False, use_dora=False,
                quantization="none")


def _peft_config(**changes: object) -> dict:
    """adapter_config.json exactly as the installed PEFT writes it (so a new PEFT default shows up here)."""
    from peft import LoraConfig

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    as_json = json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
    return {**as_json, **changes}


def test_what_peft_writes_agrees_and_is_servable() -> None:
    config = _peft_config()
    assert manifest_problems(config, LORA) == []
    assert servable_problems(config) == []
    assert set(config) <= set(COMPARED) | set(MUST_BE_UNSET) | IGNORED | {"peft_type", "task_type", "bias", "init_lora_weights"}


MANIFEST_CASES: dict[str, tuple[dict, str]] = {
    "use_rslora": ({"use_rslora": True}, "use_rslora is True, the manifest says False"),
    "use_dora": ({"use_dora": True}, "use_dora is True, the manifest says False"),
    "r": ({"r": 16}, "r is 16, the manifest says 8"),
    "lora_alpha": ({"lora_alpha": 32}, "lora_alpha is 32.0, the manifest says 16.0"),
    "target_modules": ({"target_modules": ["q_proj"]}, "target_modules is ['q_proj'], the manifest says ['q_proj', 'v_proj']"),
    "rank_pattern": ({"rank_pattern": {"q_proj": 4}}, "rank_pattern is {'q_proj': 4}, the manifest says {}"),
    "alpha_pattern": ({"alpha_pattern": {"v_proj": 64}}, "alpha_pattern is {'v_proj': 64.0}, the manifest says {}"),
    "layers_to_transform": ({"layers_to_transform": [0]}, "layers_to_transform is [0], the manifest says None"),
    "layers_to_transform int": ({"layers_to_transform": 1}, "layers_to_transform is [1]"),
    "layers_pattern": ({"layers_pattern": "layers"}, "layers_pattern is ['layers'], the manifest says None"),
    "r as text": ({"r": "8"}, "r is '8', not an integer"),
    "r as bool": ({"r": True}, "r is True, not an integer"),
    "alpha as text": ({"lora_alpha": "16"}, "lora_alpha is '16', not a number"),
    "rslora as text": ({"use_rslora": "yes"}, "use_rslora is 'yes', not true or false"),
    "targets as regex": ({"target_modules": ".*proj"}, "target_modules is '.*proj', not a list of module names"),
}


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=list(MANIFEST_CASES))
def test_each_compared_field_disagreeing_with_the_manifest(case: str) -> None:
    changes, expected = MANIFEST_CASES[case]
    problems = manifest_problems(_peft_config(**changes), LORA)
    assert len(problems) == 1 and expected in problems[0], problems


def test_fields_agreeing_with_the_manifest_in_other_spellings() -> None:
    lora = LORA.model_copy(update={"use_rslora": True, "rank_pattern": {"q_proj": 4}, "layers_to_transform": [1, 0],
                                   "layers_pattern": ["layers"], "alpha_pattern": {"v_proj": 8.0}})
    config = _peft_config(use_rslora=True, rank_pattern={"q_proj": 4}, layers_to_transform=[0, 1], layers_pattern="layers",
                          alpha_pattern={"v_proj": 8}, lora_alpha=16.0, lora_dropout=0.3)
    assert manifest_problems(config, lora) == []
    assert manifest_problems(["not", "an", "object"], LORA) == ["adapter_config.json: is a JSON list, not an object"]


SERVABLE_CASES: dict[str, tuple[dict, str | None]] = {
    "rsLoRA": ({"use_rslora": True}, None),
    "gaussian init": ({"init_lora_weights": "gaussian"}, None),
    "unknown field left unset": ({"some_future_option": None}, None),
    "rank_pattern within limits": ({"rank_pattern": {"q_proj": 512}}, None),
    "DoRA": ({"use_dora": True}, "vLLM cannot serve DoRA"),
    "LoRA bias": ({"lora_bias": True}, "lora_bias=True: vLLM does not support LoRA bias"),
    "PiSSA init": ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' changes the base weights"),
    "LoftQ init": ({"init_lora_weights": "loftq"}, "changes the base weights"),
    "aLoRA": ({"alora_invocation_tokens": [1, 2]}, "Activated LoRA"),
    "layer replication": ({"layer_replication": [[0, 2]]}, "layer_replication"),
    "QALoRA": ({"use_qalora": True}, "QALoRA"),
    "BD-LoRA": ({"use_bdlora": {"a": 1}}, "block-diagonal"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']"),
    "trainable tokens": ({"trainable_token_indices": [5]}, "trainable_token_indices"),
    "target_parameters": ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters"),
    "fan_in_fan_out": ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    "auto_mapping": ({"auto_mapping": {"base_model_class": "X", "parent_library": "evil"}}, "auto_mapping"),
    "bias": ({"bias": "all"}, "bias='all'"),
    "peft_type": ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
    "task_type": ({"task_type": "SEQ_CLS"}, "task_type is 'SEQ_CLS'"),
    "unknown field set": ({"some_future_option": "on"}, "some_future_option='on' is a field lorafleet does not know"),
    "rank_pattern too large": ({"rank_pattern": {"q_proj": 1024}}, "rank_pattern gives 'q_proj' rank 1024"),
    "rank_pattern regex key": ({"rank_pattern": {"(a+)+$": 4}}, "is not a module name"),
    "rank too large": ({"r": 1024}, "rank r=1024 cannot be served"),
    "unservable target": ({"target_modules": ["q_proj", "embed_tokens"]}, "target modules ['embed_tokens'] cannot be served"),
}


@pytest.mark.parametrize("case", SERVABLE_CASES, ids=list(SERVABLE_CASES))
def test_servable_problems(case: str) -> None:
    changes, expected = SERVABLE_CASES[case]
    problems = servable_problems(_peft_config(**changes))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_max_rank_counts_rank_pattern() -> None:
    assert max_rank({"r": 8}) == 8
    assert max_rank({"r": 8, "rank_pattern": {"q_proj": 64, "v_proj": 4}}) == 64
    assert max_rank({"r": "8"}) is None


ODD_VALUES = [None, True, False, 0, -1, 1.5, "x", "", [], [None], [{}], [[1]], {}, {"a": []}, {"q_proj": "8"}]


def test_no_value_of_any_field_crashes_the_checks() -> None:
    """Every field set to every odd JSON value: the checks return problems, they never raise."""
    from lorafleet.registry.checks import tensor_problems

    header = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", [8, 64])}
    base = {"model.layers.0.self_attn.q_proj.weight": ("F32", [64, 64])}
    for field in [*_peft_config(), "unknown_field"]:
        for value in ODD_VALUES:
            config = _peft_config(**{field: value})
            for check in (lambda c: manifest_problems(c, LORA), servable_problems, lambda c: tensor_problems(c, header, base)):
                assert isinstance(check(config), list), (field, value)
            max_rank(config)
