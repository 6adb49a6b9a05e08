"""Pieces of benchmarks/serve.py that run as their own processes or build its inputs:

- `adapter_artifact`: a real lorafleet artifact (PEFT LoRA, random B so it changes outputs, manifest) on
  the embedded model; serving speed does not depend on the weights' values.
- `baseline_app`: the seed's pre-migration serving — one FastAPI endpoint calling transformers
  `pipeline()` on a PeftModel whose adapter is switched per request (`set_adapter`), under a lock
  because one model object cannot serve two adapters at once.
- `canned_app`: an instant upstream speaking enough of vLLM's API for the gateway (health, models,
  adapter load, chat completions), answering every completion with the same bytes.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapter_artifact(dest: Path, base: Path, seed: int, r: int = 16, max_seq_length: int = 512) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorafleet.artifact import DatasetSpec, LoraSpec, Manifest, TrainMetrics, file_checksums, write_manifest
    from lorafleet.models import load_tokenizer, model_fingerprint, tokenizer_fingerprint

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=ALL_LINEAR, lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    load_tokenizer(base).save_pretrained(dest)
    write_manifest(dest, Manifest(
        base_model="smollm2-135m-instruct", base_fingerprint=model_fingerprint(base), tokenizer_fingerprint=tokenizer_fingerprint(base),
        max_seq_length=max_seq_length,
        lora=LoraSpec(r=r, alpha=2 * r, dropout=0.0, target_modules=ALL_LINEAR, use_rslora=False, use_dora=False, quantization="none"),
        dataset=DatasetSpec(sha256="0" * 64, train_samples=0, eval_samples=0), metrics=TrainMetrics(),
        files=file_checksums(dest), lorafleet_version="bench",
    ))
    return dest


def baseline_app(base: Path, adapters: dict[str, Path]):  # type: ignore[no-untyped-def]
    import torch
    from fastapi import Body, FastAPI
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    names = list(adapters)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/generate")
    def run(request: dict = Body(...)) -> dict:  # {"adapter", "messages", "max_tokens"}
        with lock:
            model.set_adapter(request["adapter"])
            out = generate(request["messages"], max_new_tokens=request["max_tokens"], min_new_tokens=request["max_tokens"],
                           do_sample=False)
        text = out[0]["generated_text"][-1]["content"]
        return {"text": text, "completion_tokens": request["max_tokens"]}

    return app


CANNED_COMPLETION = json.dumps({
    "id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": "canned",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the canned upstream."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}).encode()
CANNED_MODELS = json.dumps({"object": "list", "data": [{"id": "smollm2-135m-instruct", "object": "model", "parent": None}]}).encode()


async def canned_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """A bare ASGI app (no framework, so the upstream costs as little as possible)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    body = CANNED_MODELS if path == "/v1/models" else b"{}" if path == "/health" else b'"ok"' if "lora" in path else CANNED_COMPLETION
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
