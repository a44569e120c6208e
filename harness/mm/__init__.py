"""Multimodal core shared by the simulated engine and the proxy.

One implementation of tokens, chat templates, image geometry, image hashing and block hashing, so that a
router and a worker built on it agree on every key by construction.
"""
