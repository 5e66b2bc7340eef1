"""Packs: batching sealed chunks, erasure coding them, uploading and reading them back."""
