"""Turning a Plan into processes: bubblewrap argv, the seccomp program, the in-sandbox shim."""
