"""SHA-256 for the run path without hashlib's start-up cost.

`import hashlib` loads OpenSSL's libcrypto and blake2 (~2.5 ms on every `sandboxctl run`), for
hashes of a few hundred bytes (policy files, log lines, cache keys). The interpreter's own
SHA-256 module is the same function; hashlib is the fallback where a build lacks it.
"""

from __future__ import annotations

try:
    from _sha2 import sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # pragma: no cover - a build without the built-in module
        from hashlib import sha256

__all__ = ["sha256"]
