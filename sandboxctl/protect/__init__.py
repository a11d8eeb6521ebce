"""Protected paths (SPEC principle 3): files that run later outside the sandbox."""
