"""The compiled shim's cache file: written once, atomically, by any number of threads at once."""

from __future__ import annotations

import os
import threading

from sandboxctl.launch import shim_code


def test_threads_of_one_process_write_the_compiled_shim_at_once(tmp_path):
    source = tmp_path / "shim.py"
    source.write_text("print('shim')\n")
    compiled = str(tmp_path / "cache" / "shim-x.pyc")
    assert _all_at_once(8, lambda: shim_code.ensure(str(source), compiled)) == []
    assert os.listdir(tmp_path / "cache") == ["shim-x.pyc"]  # no temporary left behind


def test_a_killed_writers_leftover_does_not_stop_the_next(tmp_path):
    source = tmp_path / "shim.py"
    source.write_text("print('shim')\n")
    compiled = tmp_path / "cache" / "shim-x.pyc"
    compiled.parent.mkdir()
    (compiled.parent / f"shim-x.pyc.{os.getpid()}.tmp").write_bytes(b"half")  # the old fixed name
    shim_code.ensure(str(source), str(compiled))
    assert compiled.read_bytes().startswith(shim_code._magic())


def test_runs_starting_at_once_all_get_the_mask_file(tmp_path):
    """spawn.empty_file: the first runs of a fresh state dir race to make it; none may fail."""
    from sandboxctl.supervise import spawn

    for round_ in range(20):
        state = tmp_path / f"state{round_}"
        state.mkdir()
        def make(state=state) -> None:
            assert spawn.empty_file(state) == str(state / "empty")

        assert _all_at_once(6, make) == []
        assert (state / "empty").stat().st_size == 0


def _all_at_once(n: int, work) -> list[BaseException]:
    """Run `work` in n threads released together by a barrier; what any of them raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
