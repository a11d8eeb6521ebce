"""Run ids: when (UTC, to the second) and 24 random bits, e.g. 20261201T112124-543db3."""

from __future__ import annotations

import os
import time


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()
