"""The simulated vLLM engine: the embedded default worker of the harness."""
