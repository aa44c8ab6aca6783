"""DualPath inside vLLM: a V1 KV connector for both read paths, and a DualPath router.

Modules that import vLLM (`connector`) are only importable inside the separate vLLM
environment (`make vllm-env`); everything else here (messages, the relay link, the KV layout
conversion, the connector's state machines, the router) imports no vLLM, so the main
environment can lint, type-check and unit-test it. See docs/decisions/0001-vllm-connector.md.
"""
