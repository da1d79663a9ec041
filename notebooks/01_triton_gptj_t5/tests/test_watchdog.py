"""The Triton watchdog's decisions, without a server: which failure it reads from what it sees."""
import threading
from types import SimpleNamespace

import ft_triton_repo


def _watched(snapshot, alive):
    srv = ft_triton_repo.TritonServer(["true"], http=1, grpc=2, metrics=3, admin_key="k", shm_prefix="p",
                                      watch_interval=0.01)
    srv.expected = {"gptj": {"stub": 11, "ranks": [12, 13], "shm": "p-gptj"},
                    "preprocessing": {"stub": 14, "ranks": [], "shm": "p-pre"}}
    srv.proc = SimpleNamespace(returncode=-9)
    calls, stop = [], threading.Event()
    srv.snapshot = lambda: stop.set() or snapshot()   # one round
    srv.alive = alive
    srv._reload = lambda model, why, was, stop_: calls.append(("reload", model, why)) or True
    srv._restart = lambda stop_: calls.append(("restart",))
    srv._watch(stop)
    return srv, calls


def test_a_server_killed_while_its_children_are_listed_is_restarted_not_reloaded():
    """SIGKILL of tritonserver during the snapshot: its children are gone from the listing before the server can
    be reaped. That is the server's exit (restart), not every model's stub dying (reload through a dead server);
    asking alive() before the snapshot read it the second way (a flaky test_z_killed_tritonserver_is_restarted)."""
    died = []
    srv, calls = _watched(lambda: died.append(True) or {}, lambda: not died)
    assert calls == [("restart",)]
    assert [m for _, m in srv.events] == ["tritonserver exited with code -9; restarting it"]


def test_a_dead_stub_or_rank_of_a_live_server_is_reloaded():
    srv, calls = _watched(lambda: {"gptj": {"stub": 11, "ranks": [12], "shm": "p-gptj"}}, lambda: True)
    assert calls == [("reload", "gptj", "tensor-parallel rank processes [13] are gone"),
                     ("reload", "preprocessing", "its python-backend stub (pid 14) is gone")]


def test_nothing_missing_nothing_done():
    seen = []

    def snapshot():
        seen.append(1)
        if len(seen) == 3:
            stop_after.set()
        return {"gptj": {"stub": 11, "ranks": [12, 13], "shm": "p-gptj"},
                "preprocessing": {"stub": 14, "ranks": [], "shm": "p-pre"}}
    stop_after = threading.Event()
    srv = ft_triton_repo.TritonServer(["true"], http=1, grpc=2, metrics=3, admin_key="k", shm_prefix="p",
                                      watch_interval=0.01)
    srv.expected = snapshot()
    srv.snapshot, srv.alive = snapshot, lambda: True
    srv._reload = srv._restart = lambda *a: (_ for _ in ()).throw(AssertionError("acted"))
    srv._watch(stop_after)
    assert srv.events == [] and len(seen) >= 3
