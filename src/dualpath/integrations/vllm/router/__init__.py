"""The DualPath router: an OpenAI-compatible proxy that runs `dualpath.scheduler` in front of
vLLM prefill and decode instances (`python -m dualpath.integrations.vllm.router`)."""
