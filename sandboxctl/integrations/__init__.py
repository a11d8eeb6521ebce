"""Adapters for agent SDKs: each one runs the SDK's tools under a sandboxctl policy."""
