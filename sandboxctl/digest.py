"""SHA-256 for the run path without hashlib's start-up cost.

`import hashlib` loads OpenSSL's libcrypto and blake2 (~2.5 ms on every `sandboxctl run`), for
hashes of a few hundred bytes (policy files, log lines, cache keys). The interpreter's own
SHA-256 module is the same function; hashlib is the fallback where a build lacks it.
"""

from __future__ import annotations

import sys

# by version, not by trying: a name the interpreter lacks is looked for on every sys.path entry
# (`_sha2` on 3.11), where a module planted in a sandbox-writable one would be found
try:
    if sys.version_info >= (3, 12):
        from _sha2 import sha256
    else:
        from _sha256 import sha256
except ImportError:  # pragma: no cover - a build without the built-in module
    from hashlib import sha256

__all__ = ["sha256"]
