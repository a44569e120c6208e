"""The reference proxy: multimodal-aware KV routing, dynamic LoRA and request ids in front of N workers."""
