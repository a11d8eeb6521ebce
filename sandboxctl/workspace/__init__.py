"""Overlay workspaces: a run's writes held in a layer of their own until a human decides.

mount (the overlay in bubblewrap's mount namespace) → layer (the run's directory in the state
dir, its record and state) → seal (the layer's hashes when the run ends; review) → changes (the
layer against the host) → apply / undo (journaled, atomic per change), discard (in layer).
"""
