"""Policies expressed for other systems (`sandboxctl export`): pure translations of the policy model.

Each target says, in its output, what it cannot express; nothing is dropped silently.
"""
