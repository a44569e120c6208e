"""The multimodal routing gate: the scenario, its checks, test payloads and the image server."""
