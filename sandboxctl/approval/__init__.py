"""Boundary escapes answered by a human (or by the approval mode): broker, grants, front ends."""
