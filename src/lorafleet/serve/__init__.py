"""`lorafleet serve`: vLLM replicas behind an OpenAI-compatible gateway that routes, splits canaries, falls back and measures."""
