"""aifuncs/_fork.py: what a forked child inherits from its parent is not used there (each test forks in a
fresh interpreter: tests/forking.py)."""

from __future__ import annotations

from forking import run_forking


def test_a_model_lock_held_by_another_thread_at_the_fork_is_free_in_the_child() -> None:
    done = run_forking(
        """
        import threading, time
        import aifuncs.providers.mlflow as mlflow_kind

        loading = threading.Event()

        def load():  # a model loading in another thread while the process forks
            with mlflow_kind._lock:
                loading.set()
                time.sleep(1.0)

        threading.Thread(target=load, daemon=True).start()
        loading.wait()

        def child():
            assert mlflow_kind._lock.acquire(timeout=5), "the child inherited the lock held"

        print("child exit", in_a_forked_child(child))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:1] == ["child exit 0"]


def test_process_local_values_are_the_processs_own_and_the_parents_are_kept() -> None:
    done = run_forking(
        """
        import gc, threading
        from aifuncs import _fork

        local = _fork.ProcessLocal()
        local.values.name = "main thread's"
        class Precious:  # a DuckDB connection, say: its finalizer must not run in the child
            def __del__(self):
                print("finalized in", "child" if _fork.forked_child() else "parent", flush=True)

        ready, stop = threading.Event(), threading.Event()

        def other():  # a thread's value: CPython frees it in the child inside os.fork()
            local.values.thing = Precious()
            ready.set()
            stop.wait()

        thread = threading.Thread(target=other)
        thread.start()
        ready.wait()

        def child():
            assert getattr(local.values, "name", None) is None  # the child's own values start empty
            local.values.name = "child's"
            gc.collect()

        print("child exit", in_a_forked_child(child))
        print("parent keeps", local.values.name)
        stop.set()
        thread.join()
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["child exit 0", "parent keeps main thread's"]
    assert "finalized in child" not in lines
