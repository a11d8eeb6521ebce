"""The supervisor: runs outside the sandbox and owns lifecycle, limits, logging and clean-up."""
