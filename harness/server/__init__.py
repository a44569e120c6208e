"""What the simulated worker and the proxy share: OpenAI errors and responses, the app runner, KV events."""
