"""gatewayd: an LLM guardrail gateway for OpenAI-compatible APIs."""

__version__ = "0.1.0"
