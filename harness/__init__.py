"""mmharness: a test and benchmark harness for multimodal LLM routing."""

__version__ = "0.1.0"
