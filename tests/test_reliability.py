"""Reliability of every kernel, beyond parity: determinism (repeated calls, OpenMP thread
counts), concurrency (Python threads, CUDA streams, the GIL released), leaks (host RSS,
CuPy pool), C++/CUDA errors that surface as Python exceptions and leave the process usable,
and (marked slow) inputs past 2**31 elements.

Every forward and backward function of pydl.functional (conv, pool, batch_norm,
cross_entropy) and pydl.ops nms / batched_nms / box_iou has a case in CASES; a test holds
that table against the modules' __all__.
"""
import concurrent.futures as cf
import dataclasses
import importlib
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pydl.functional as F
import pydl.ops
from pydl import _backend

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
# Under .ci/sanitize (ASan preloaded) a failed allocation aborts instead of raising, and
# address-space limits cannot be set (ASan reserves terabytes of shadow memory).
SANITIZED = bool(os.environ.get("PYDL_SANITIZED")) or "asan" in os.environ.get("LD_PRELOAD", "")


# ---------------------------------------------------------------- the cases

def _boxes(rng, n, dtype):
    xy = rng.uniform(0, 60, (n, 2))
    wh = rng.uniform(1, 25, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def _case_arrays(name, rng, dtype):
    """Host inputs of a case (seeded; big enough that the OpenMP paths run on 2 threads)."""
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    if name.startswith("conv_transpose2d"):
        return dict(x=r(3, 8, 9, 11), w=r(8, 6, 3, 3), b=r(6), dy=r(3, 6, 19, 24))
    if name.startswith("conv2d_winograd"):
        # Big enough for the Winograd path at stride 1 and 2 (>= 256 and 192 tiles, >= 64
        # channels at stride 2) and for more than one chunk of tiles.
        return dict(x1=r(2, 16, 24, 24), w1=r(16, 16, 3, 3), b1=r(16), dy1=r(2, 16, 24, 24),
                    x2=r(4, 64, 28, 28), w2=r(64, 64, 3, 3), b2=r(64), dy2=r(4, 64, 14, 14))
    if name.startswith("conv2d_depthwise"):
        return dict(x=r(3, 16, 17, 19), w=r(16, 1, 3, 3), b=r(16), dy=r(3, 16, 17, 19))
    if name.startswith("conv2d"):
        return dict(x=r(4, 8, 17, 19), w=r(12, 4, 3, 2), b=r(12), dy=r(4, 12, 9, 9))
    if name.startswith(("max_pool2d", "avg_pool2d", "adaptive", "global")):
        # No ties; 35 planes (odd, not a multiple of 4) of 1023 values: past the pool kernels'
        # threading threshold, so OMP 1 vs 2 really compares two thread partitions.
        x = rng.permutation(5 * 7 * 31 * 33).astype(dtype).reshape(5, 7, 31, 33)
        return dict(x=x, dy7=r(5, 7, 11, 11), dy10=r(5, 7, 16, 17), dy5=r(5, 7, 5, 3), dy1=r(5, 7, 1, 1))
    if name.startswith("batch_norm"):
        return dict(x=r(6, 5, 13, 17), dy=r(6, 5, 13, 17), m=r(5), v=rng.uniform(0.5, 2, 5).astype(dtype),
                    g=r(5), b=r(5))
    if name.startswith(("softmax", "log_softmax")):
        return dict(x=r(64, 37, 5), dy=r(64, 37, 5))
    if name.startswith("cross_entropy"):
        return dict(x=r(40, 11, 9), t=rng.integers(0, 11, (40, 9)), w=rng.uniform(0.5, 2, 11).astype(dtype),
                    gl=np.array(1.5, dtype))
    if name in ("nms", "batched_nms", "box_iou"):
        return dict(b=_boxes(rng, 700, dtype), s=rng.permutation(700).astype(dtype), i=rng.integers(0, 5, 700),
                    b2=_boxes(rng, 90, dtype))
    raise KeyError(name)


def _make_call(name, a):
    """The kernel call of case `name` on the arrays `a` (all on one backend); fresh copies of
    the arrays a call modifies (running statistics), so every call sees the same inputs."""
    if name == "conv2d":
        return lambda: F.conv2d(a["x"], a["w"], a["b"], stride=(2, 2), padding=(1, 0), groups=2)
    if name == "conv2d_backward":
        return lambda: F.conv2d_backward(a["dy"], a["x"], a["w"], stride=(2, 2), padding=(1, 0), groups=2)
    if name == "conv2d_winograd":
        return lambda: (F.conv2d(a["x1"], a["w1"], a["b1"], padding=1),
                        F.conv2d(a["x2"], a["w2"], a["b2"], stride=2, padding=1))
    if name == "conv2d_winograd_backward":
        return lambda: (F.conv2d_backward(a["dy1"], a["x1"], a["w1"], padding=1),
                        F.conv2d_backward(a["dy2"], a["x2"], a["w2"], stride=2, padding=1))
    if name == "conv2d_depthwise":
        return lambda: F.conv2d(a["x"], a["w"], a["b"], padding=1, groups=16)
    if name == "conv2d_depthwise_backward":
        return lambda: F.conv2d_backward(a["dy"], a["x"], a["w"], padding=1, groups=16)
    if name == "conv_transpose2d":
        return lambda: F.conv_transpose2d(a["x"], a["w"], a["b"], stride=2, padding=0, output_padding=(0, 1))
    if name == "conv_transpose2d_backward":
        return lambda: F.conv_transpose2d_backward(a["dy"], a["x"], a["w"], stride=2, output_padding=(0, 1))
    if name == "max_pool2d":
        return lambda: F.max_pool2d(a["x"], 3, stride=3, padding=1, return_indices=True)
    if name == "max_pool2d_backward":
        _, ind = F.max_pool2d(a["x"], 3, stride=3, padding=1, return_indices=True)
        return lambda: F.max_pool2d_backward(a["dy7"], ind, a["x"].shape, 3, stride=3, padding=1)
    if name == "avg_pool2d":
        return lambda: F.avg_pool2d(a["x"], (3, 2), stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    if name == "avg_pool2d_backward":
        return lambda: F.avg_pool2d_backward(a["dy10"], a["x"].shape, (3, 2), stride=2, padding=1,
                                             ceil_mode=False, count_include_pad=False)
    if name == "adaptive_avg_pool2d":
        return lambda: F.adaptive_avg_pool2d(a["x"], (5, 3))
    if name == "adaptive_avg_pool2d_backward":
        return lambda: F.adaptive_avg_pool2d_backward(a["dy5"], a["x"].shape)
    if name == "global_avg_pool2d":
        return lambda: F.global_avg_pool2d(a["x"])
    if name == "global_avg_pool2d_backward":
        return lambda: F.global_avg_pool2d_backward(a["dy1"], a["x"].shape)
    if name in ("batch_norm", "batch_norm_forward"):
        fn = getattr(F, name)

        def call():
            m, v = a["m"].copy(), a["v"].copy()
            out = fn(a["x"], m, v, a["g"], a["b"], training=True, momentum=0.3)
            return out, m, v
        return call
    if name == "batch_norm_eval":
        return lambda: F.batch_norm(a["x"], a["m"], a["v"], a["g"], a["b"], training=False)
    if name == "batch_norm_backward":
        _, mean, invstd = F.batch_norm_forward(a["x"], None, None, a["g"], a["b"], training=True)
        return lambda: F.batch_norm_backward(a["dy"], a["x"], a["g"], mean, invstd, training=True)
    if name in ("softmax", "log_softmax"):
        return lambda: getattr(F, name)(a["x"], axis=1)
    if name in ("softmax_backward", "log_softmax_backward"):
        y = getattr(F, name[:-len("_backward")])(a["x"], axis=1)
        return lambda: getattr(F, name)(a["dy"], y, axis=1)
    if name == "cross_entropy":
        return lambda: F.cross_entropy(a["x"], a["t"], a["w"], label_smoothing=0.1)
    if name == "cross_entropy_forward":
        return lambda: F.cross_entropy_forward(a["x"], a["t"], a["w"], reduction="sum")
    if name == "cross_entropy_backward":
        return lambda: F.cross_entropy_backward(a["gl"], a["x"], a["t"], a["w"], label_smoothing=0.1)
    if name == "nms":
        return lambda: pydl.ops.nms(a["b"], a["s"], 0.4)
    if name == "batched_nms":
        return lambda: pydl.ops.batched_nms(a["b"], a["s"], a["i"], 0.5)
    if name == "box_iou":
        return lambda: pydl.ops.box_iou(a["b"], a["b2"])
    raise KeyError(name)


CASES = [
    "conv2d", "conv2d_backward", "conv2d_winograd", "conv2d_winograd_backward",
    "conv2d_depthwise", "conv2d_depthwise_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
    "batch_norm", "batch_norm_forward", "batch_norm_eval", "batch_norm_backward",
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "cross_entropy", "cross_entropy_forward", "cross_entropy_backward",
    "nms", "batched_nms", "box_iou",
]
_NOT_KERNELS = {"set_conv_workspace_limit", "get_conv_workspace_limit"}


def make_case(name, xp=np, dtype=np.float32, seed=0):
    rng = np.random.default_rng([seed, CASES.index(name)])
    host = _case_arrays(name, rng, np.dtype(dtype))
    return _make_call(name, {k: xp.asarray(v) for k, v in host.items()})


def flat_arrays(out):
    """Every array (as host NumPy) in a kernel's result: tuples, dataclasses, scalars."""
    if out is None:
        return []
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in flat_arrays(o)]
    if dataclasses.is_dataclass(out):
        return [a for f in dataclasses.fields(out) for a in flat_arrays(getattr(out, f.name))]
    if isinstance(out, (int, float, np.generic)):
        return [np.asarray(out)]
    if hasattr(out, "get") and not isinstance(out, np.ndarray):
        return [out.get()]
    return [np.array(out)]


def assert_bit_identical(got, want, what=""):
    g, w = flat_arrays(got), flat_arrays(want)
    assert len(g) == len(w), what
    for i, (a, b) in enumerate(zip(g, w)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} output {i}"
        # Byte comparison: NaNs and signed zeros must match too.
        assert a.tobytes() == b.tobytes(), f"{what} output {i}: not bit-identical"


def _sync(xp):
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


# ---------------------------------------------------------------- table coverage

def test_cases_cover_every_kernel():
    """Each public function of the old-op modules (and nms/batched_nms/box_iou) has a case;
    a new function added there without a case fails here."""
    # By module object: the package attribute `batch_norm` is the function, not the module.
    mods = [importlib.import_module(m) for m in ("pydl.functional.conv", "pydl.functional.pool",
            "pydl.functional.batch_norm", "pydl.functional.cross_entropy", "pydl.ops.nms")]
    public = {n for m in mods for n in m.__all__} - _NOT_KERNELS
    assert public, "no public kernels found"
    missing = public - set(CASES)
    assert not missing, f"kernels without a reliability case: {sorted(missing)}"
    for name in CASES:  # every case builds and returns at least one array
        assert flat_arrays(make_case(name)())


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_repeated_calls_bit_identical(xp, dtype):
    for name in CASES:
        call = make_case(name, xp, dtype)
        first = flat_arrays(call())
        for _ in range(2):
            assert_bit_identical(call(), first, name)


_CHILD = """
import sys
sys.path.append({tests!r})
import numpy as np
import test_reliability as T
from pydl import _backend
out = {{}}
for name in T.CASES:
    for dt in (np.float32, np.float64):
        for i, a in enumerate(T.flat_arrays(T.make_case(name, np, dt)())):
            out[f"{{name}}-{{np.dtype(dt).name}}-{{i}}"] = a
out["threads"] = np.array(_backend.cpu().max_threads())
np.savez(sys.argv[1], **out)
"""


def run_child(script, tmp_path, *args, env=None, check=True, timeout=300):
    """A fresh interpreter that imports the pydl this process imported (installed or in-tree
    build) and starts in tmp_path, so a source checkout in the working directory cannot shadow it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(_backend.__file__)))
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, *sys.path]))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, check=check, timeout=timeout)


_SPIN_CHILD = """
import os, sys
seen = []
class Spy:  # records GOMP_SPINCOUNT at the moment pydl._cpu (and so libgomp) loads
    def find_spec(self, name, path=None, target=None):
        if name == "pydl._cpu":
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
        return None
sys.meta_path.insert(0, Spy())
import pydl._backend as b
b._libgomp_loaded = lambda: False
b.cpu()
print(seen[0], os.environ.get("GOMP_SPINCOUNT"))
"""


@pytest.mark.parametrize("env, want", [({}, "30000 None"), ({"GOMP_SPINCOUNT": "7"}, "7 7"),
                                       ({"OMP_WAIT_POLICY": "PASSIVE"}, "None None")])
def test_gomp_spin_set_only_while_libgomp_loads(tmp_path, env, want):
    """pydl shortens GNU OpenMP's idle spinning (it took the cores from NumPy's BLAS) only while
    libgomp loads, never over a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY, and leaves the
    environment as it found it (child processes see the user's)."""
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    here = os.path.dirname(os.path.dirname(os.path.abspath(_backend.__file__)))
    r = subprocess.run([sys.executable, "-c", _SPIN_CHILD], env=dict(base, PYTHONPATH=here, **env), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == want.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("env, want", [({}, "True"), ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "False"),
                                       ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}, "False")])
def test_malloc_policy_respects_the_user(tmp_path, env, want):
    """pydl raises glibc's mmap/trim thresholds (big layer outputs reuse heap memory instead of
    page-faulting in on every call) unless the user tuned malloc through the environment."""
    if want == "True" and "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("under AddressSanitizer malloc is ASan's, whose mallopt does nothing")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    here = os.path.dirname(os.path.dirname(os.path.abspath(_backend.__file__)))
    r = subprocess.run([sys.executable, "-c", "import pydl._backend as b; print(b._set_malloc_policy())"],
                       env=dict(base, PYTHONPATH=here, **env), cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == want


def test_cpu_results_identical_across_thread_counts(tmp_path):
    """Every CPU kernel (both dtypes) gives the same bits with OMP_NUM_THREADS=1 and 2 (OpenMP
    reads it at start-up, hence the subprocesses). The Winograd cases cut their tiles into
    several chunks: OpenBLAS's sums depend on a GEMM's column count, so the chunks must not
    follow the thread count. (The im2col paths at larger sizes still split by it.)"""
    outs = []
    for nt in ("1", "2"):
        path = str(tmp_path / f"t{nt}.npz")
        r = run_child(_CHILD.format(tests=TESTS_DIR), tmp_path, path, env={"OMP_NUM_THREADS": nt}, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(dict(np.load(path)))
    assert int(outs[0].pop("threads")) == 1 and int(outs[1].pop("threads")) == 2
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) >= 2 * len(CASES)
    for k in outs[0]:
        assert outs[0][k].tobytes() == outs[1][k].tobytes(), f"{k}: 1 vs 2 threads differ"


# ---------------------------------------------------------------- processes

_FORK_SCRIPT = """
import os, sys
sys.path.append({tests!r})
import numpy as np
import test_reliability as T


def results():
    # Every kernel's case (big enough for the threaded paths), both dtypes.
    return [a for name in T.CASES for dt in (np.float32, np.float64)
            for a in T.flat_arrays(T.make_case(name, np, dt)())]


def same(want):
    got = results()
    return len(got) == len(want) and all(x.tobytes() == y.tobytes() for x, y in zip(got, want))


if __name__ == "__main__":
    import concurrent.futures as cf
    import multiprocessing as mp
    method = sys.argv[1]
    want = results()  # the parent ran every threaded kernel: its OpenMP pool exists
    if method == "os.fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0 if same(want) else 3)
        ok = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0]
    elif method == "pool":
        with mp.get_context("fork").Pool(2) as pool:
            ok = pool.map(same, [want] * 2)
    else:  # a ProcessPoolExecutor on the start method after the colon
        with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method.split(":")[1])) as ex:
            ok = list(ex.map(same, [want] * 2))
    assert all(ok), f"{{method}}: a child computed other results: {{ok}}"
    assert same(want), f"{{method}}: the parent's results changed after its children ran"
    print("fork-ok", method)
"""


@pytest.mark.parametrize("method", ["os.fork", "pool", "executor:fork", "executor:spawn", "executor:forkserver"])
def test_pydl_works_in_worker_processes(method, tmp_path):
    """After the parent ran every threaded kernel, a child made by os.fork, a 'fork' Pool or a
    ProcessPoolExecutor computes the same bits (GNU OpenMP's pool does not survive fork: on
    the old code the child's first parallel region waited forever), and the parent keeps
    working. A hang kills the child's whole process group and fails this test, not the run."""
    import signal
    script = tmp_path / "forkcheck.py"
    script.write_text(_FORK_SCRIPT.format(tests=TESTS_DIR))
    here = os.path.dirname(os.path.dirname(os.path.abspath(_backend.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, TESTS_DIR, *sys.path]), OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, str(script), method], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{method}: pydl hung in a worker process (killed after 240 s)")
    assert proc.returncode == 0 and "fork-ok" in out, f"{method}: exit {proc.returncode}\n{err[-3000:]}"


def test_forked_child_runs_one_thread(tmp_path):
    """The child of a fork runs pydl's kernels on one OpenMP thread and says so; the parent
    keeps its thread count."""
    r = run_child("""
        import os
        import numpy as np
        from pydl import _backend
        import pydl.functional as F
        cpu = _backend.cpu()
        F.conv2d(np.ones((2, 8, 16, 16)), np.ones((8, 8, 3, 3)))
        assert cpu.max_threads() == 2 and not cpu._in_forked_child()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if cpu.max_threads() == 1 and cpu._in_forked_child() else 3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert cpu.max_threads() == 2
        """, tmp_path, env={"OMP_NUM_THREADS": "2"}, timeout=120)
    assert r.returncode == 0


def test_numpy_blas_runs_on_pydl_pool(tmp_path):
    """NumPy's OpenBLAS (scipy-openblas wheels) runs its parallel work on pydl's OpenMP pool once
    pydl is imported: the same bits as its own threads, from several Python threads at once
    and beside pydl kernels, and in a forked child (its own threads again)."""
    r = run_child("""
        import os, threading
        import numpy as np
        rng = np.random.default_rng(0)
        cases = [(rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt))
                 for m, k, n in ((512, 300, 700), (64, 2000, 1), (2000, 2000, 1), (3, 5, 7)) for dt in (np.float32, np.float64)]
        want = [a @ b for a, b in cases]  # NumPy's own threads
        import pydl.functional as F
        from pydl import _backend
        cpu = _backend.cpu()
        if _backend._numpy_blas_hook() is None:
            print("no-hook"); raise SystemExit(0)
        x, w = rng.standard_normal((4, 16, 20, 20)), rng.standard_normal((16, 16, 3, 3))
        conv = F.conv2d(x, w, padding=1)
        calls = cpu._numpy_blas_calls()
        got = [a @ b for a, b in cases]
        assert all(g.tobytes() == v.tobytes() for g, v in zip(got, want)), "matmul changed"
        assert cpu._numpy_blas_calls() > calls, "NumPy's BLAS did not run on pydl's pool"
        bad = []
        def work(i):
            for _ in range(20):
                if i == 0:
                    bad.append(F.conv2d(x, w, padding=1).tobytes() != conv.tobytes())
                else:
                    bad.extend((a @ b).tobytes() != v.tobytes() for (a, b), v in zip(cases, want))
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert len(bad) > 100 and not any(bad), "concurrent results differ"
        pid = os.fork()
        if pid == 0:
            ok = all((a @ b).tobytes() == v.tobytes() for (a, b), v in zip(cases, want))
            os._exit(0 if ok and F.conv2d(x, w, padding=1).tobytes() == conv.tobytes() else 3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the forked child"
        print("shared")
        """, tmp_path, env={"OMP_NUM_THREADS": "2"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() in ("shared", "no-hook")


def test_set_num_threads_applies_to_every_python_thread(tmp_path):
    """pydl.set_num_threads as torch's: the count every Python thread's next kernel uses
    (OpenMP keeps it per thread), same bits for 1 and 2 threads, bad counts refused."""
    r = run_child("""
        import threading
        import numpy as np
        import pydl, pydl.functional as F
        assert pydl.get_num_threads() == 2
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((8, 16, 16, 16)), rng.standard_normal((16, 16, 3, 3))
        want = F.conv2d(x, w, padding=1)
        pydl.set_num_threads(1)
        seen = []
        def work():
            seen.append((pydl.get_num_threads(), F.conv2d(x, w, padding=1)))
        t = threading.Thread(target=work); t.start(); t.join()
        assert pydl.get_num_threads() == 1 and seen[0][0] == 1
        assert seen[0][1].tobytes() == want.tobytes()
        pydl.set_num_threads(2)
        t = threading.Thread(target=work); t.start(); t.join()
        assert seen[1][0] == 2 and pydl.get_num_threads() == 2
        for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)):
            try:
                pydl.set_num_threads(bad)
            except exc as e:
                assert "n:" in str(e)
            else:
                raise AssertionError(bad)
        """, tmp_path, env={"OMP_NUM_THREADS": "2"}, timeout=120)
    assert r.returncode == 0


def test_cuda_in_forked_child_is_a_clear_error(tmp_path):
    """A child forked after the parent used CUDA gets a RuntimeError that names the fix (the
    logic runs without a GPU: the parent's 'CUDA in use' state is set by hand)."""
    r = run_child("""
        import os
        from pydl import _backend
        _backend._cuda_ok = True  # as after the parent's first GPU call
        pid = os.fork()
        if pid == 0:
            try:
                _backend.cuda()
            except RuntimeError as e:
                os._exit(0 if "spawn" in str(e) and "fork" in str(e) else 4)
            os._exit(3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert _backend.cuda() is _backend._cuda_module  # the parent is unaffected
        """, tmp_path, timeout=120)
    assert r.returncode == 0


# ---------------------------------------------------------------- concurrency

def test_python_threads_match_sequential(xp):
    """4 Python threads calling every kernel at once (each case twice, interleaved) give the
    sequential results bit for bit: no shared scratch state between calls."""
    calls = {name: make_case(name, xp) for name in CASES}
    want = {name: flat_arrays(c()) for name, c in calls.items()}
    jobs = [name for _ in range(2) for name in CASES]
    np.random.default_rng(1).shuffle(jobs)

    def run(name):
        out = flat_arrays(calls[name]())
        _sync(xp)
        return name, out

    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(run, jobs))
    assert len(results) == len(jobs)
    for name, got in results:
        assert_bit_identical(got, want[name], name)


def _progress_during(fn, min_seconds=0.3):
    """Calls fn() on a worker thread (repeatedly, for at least min_seconds) while this thread
    stamps the clock in a loop; returns the fraction of the calls during which this thread
    ran, judged on the window from 20% to 80% of fn's shortest standalone duration after the
    call started (inside the C part of the call, and never after it returned). A call that
    holds the GIL stops this thread there, one that releases it does not (on a loaded machine
    the OS may still pause it now and then, hence a fraction)."""
    d = min(_timed(fn) for _ in range(3))
    calls = []
    started = threading.Event()

    def worker():
        started.set()
        time.sleep(0.01)  # let the stamping loop start first
        t_end = time.perf_counter() + min_seconds
        while not calls or calls[-1] < t_end:
            t0 = time.perf_counter()
            fn()
            calls.append(t0)

    th = threading.Thread(target=worker)
    stamps = []
    th.start()
    started.wait()
    while th.is_alive():
        stamps.append(time.perf_counter())
    th.join()
    s = np.asarray(stamps)
    return float(np.mean([((s >= t0 + 0.2 * d) & (s < t0 + 0.8 * d)).any() for t0 in calls]))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.mark.parametrize("hold", [True, False], ids=["holds", "releases"])
def test_gil_measure_tells_held_from_released(hold):
    """Control for the test below: the same C sleep called through ctypes.PyDLL (which keeps
    the GIL) stops the stamping thread, through ctypes.CDLL (which drops it) does not."""
    import ctypes
    libc = (ctypes.PyDLL if hold else ctypes.CDLL)(None)
    ran = _progress_during(lambda: libc.usleep(30000))
    assert (ran <= 0.1) if hold else (ran >= 0.35), ran


@pytest.mark.parametrize("name", ["conv2d_backward", "max_pool2d", "batch_norm", "cross_entropy_backward",
                                  "nms"])
def test_kernels_release_the_gil(name):
    """While a kernel runs, another Python thread keeps running (the C++ code drops the GIL)."""
    rng = np.random.default_rng(3)
    if name == "conv2d_backward":
        x, w = rng.standard_normal((8, 32, 40, 40), np.float32), rng.standard_normal((32, 32, 3, 3), np.float32)
        dy = rng.standard_normal((8, 32, 38, 38), np.float32)
        fn = lambda: F.conv2d_backward(dy, x, w)  # noqa: E731
    elif name == "max_pool2d":
        x = rng.standard_normal((16, 32, 96, 96), np.float32)
        fn = lambda: F.max_pool2d(x, 3, stride=1, return_indices=True)  # noqa: E731
    elif name == "batch_norm":
        x = rng.standard_normal((32, 64, 48, 48), np.float32)
        fn = lambda: F.batch_norm(x, None, None, training=True)  # noqa: E731
    elif name == "cross_entropy_backward":
        x, t = rng.standard_normal((4096, 1000), np.float32), rng.integers(0, 1000, 4096)
        fn = lambda: F.cross_entropy_backward(np.float32(1.0), x, t)  # noqa: E731
    else:
        b, s = _boxes(rng, 20000, np.float32), rng.random(20000).astype(np.float32)
        fn = lambda: pydl.ops.nms(b, s, 0.5)  # noqa: E731
    assert _progress_during(fn) >= 0.35


def test_cuda_streams_match_sequential():
    """The same kernels queued on two non-default CuPy streams at once match the sequential
    (default-stream) results: every launch goes to the caller's stream."""
    from conftest import _cupy_or_skip
    cp = _cupy_or_skip()
    calls = {name: make_case(name, cp) for name in CASES}
    want = {name: flat_arrays(c()) for name, c in calls.items()}
    cp.cuda.Device().synchronize()
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    pending = []
    for name, c in calls.items():
        for s in (s1, s2):
            with s:
                pending.append((name, s, c()))
    s1.synchronize()
    s2.synchronize()
    for name, s, out in pending:
        with s:
            assert_bit_identical(out, want[name], f"{name} on stream {s.ptr:#x}")


# ---------------------------------------------------------------- leaks

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.skipif(SANITIZED, reason="ASan's allocator quarantines freed blocks (up to 256 MiB), "
                    "so RSS grows without a leak; the uninstrumented run checks this")
def test_no_host_memory_growth_over_repeated_calls():
    """200 calls of every CPU kernel after warm-up: resident memory stays flat (a kernel that
    leaked one output-sized buffer per call would add megabytes)."""
    import gc
    calls = {name: make_case(name) for name in CASES}
    for c in calls.values():  # warm-up: thread pools, per-thread workspaces, allocator arenas
        for _ in range(20):
            c()
    gc.collect()
    base = _rss_bytes()
    for _ in range(200):
        for c in calls.values():
            c()
    gc.collect()
    grown = _rss_bytes() - base
    assert grown < 8 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 calls of each kernel"


def test_no_gpu_pool_growth_over_repeated_calls():
    """On the GPU, CuPy's pool returns to its baseline once the results are dropped (every
    temporary is freed), and stays flat over repeated calls."""
    from conftest import _cupy_or_skip
    cp = _cupy_or_skip()
    pool = cp.get_default_memory_pool()
    calls = {name: make_case(name, cp) for name in CASES}
    for c in calls.values():
        c()
    cp.cuda.Device().synchronize()
    base = pool.used_bytes()
    for _ in range(200):
        for c in calls.values():
            c()
    cp.cuda.Device().synchronize()
    assert pool.used_bytes() == base
    total = pool.total_bytes()
    for _ in range(20):
        for c in calls.values():
            c()
    cp.cuda.Device().synchronize()
    assert pool.total_bytes() <= total  # nothing held back between calls


# ---------------------------------------------------------------- errors from C++

_ERRORS_CHILD = """
import sys
if sys.argv[1] == "torch":
    import torch  # noqa: F401  (first: its pybind11 and C++ runtime load before pydl's)
import numpy as np
import pydl.functional as F
from pydl import _backend
m = _backend.cpu()
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
w = np.ones((4, 3, 3, 3), np.float32)
good = F.conv2d(x, w)
cases = [("bad_alloc", MemoryError, "out of memory"), ("runtime_error", RuntimeError, "test runtime_error"),
         ("invalid_argument", ValueError, "test invalid_argument"), ("length_error", RuntimeError, "length_error")]
if sys.argv[2] == "real":
    cases.append(("vector", MemoryError, "out of memory"))
for _ in range(3):
    for kind, exc, msg in cases:
        try:
            m._test_raise(kind)
        except exc as e:
            assert msg in str(e), (kind, str(e))
        else:
            raise AssertionError(kind + " raised nothing")
        assert np.array_equal(F.conv2d(x, w), good)  # still usable
# A C++ check reached through the binding (bypassing the Python validation): ValueError.
try:
    m.conv2d_forward(x, np.ones((4, 2, 3, 3), np.float32), None, np.empty((2, 4, 6, 6), np.float32),
                     1, 1, 0, 0, 1, 1, 1)
except ValueError as e:
    assert "conv.cpp" in str(e), str(e)
else:
    raise AssertionError("no ValueError")
assert np.array_equal(F.conv2d(x, w), good)
print("ok")
"""


@pytest.mark.parametrize("first", ["plain", "torch"])
def test_cpp_exceptions_become_python_exceptions(tmp_path, first):
    """std::bad_alloc -> MemoryError, std::runtime_error -> RuntimeError, std::invalid_argument
    -> ValueError, thrown from C++ with the GIL released, in a fresh interpreter (one that
    imported PyTorch first too: its own pybind11 and C++ runtime once made this crash); the
    process stays usable afterwards."""
    if first == "torch":
        pytest.importorskip("torch")
    r = run_child(_ERRORS_CHILD, tmp_path, first, "hook" if SANITIZED else "real", check=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (
        f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}")


_OOM_CHILD = """
import resource, sys
import numpy as np
import pydl.ops
rng = np.random.default_rng(0)
n = 4_000_000  # 80 MB of boxes and scores; NMS needs ~3x that in internal buffers
xy = rng.uniform(0, 1000, (n, 2)).astype(np.float32)
boxes = np.concatenate([xy, xy + 5], axis=1)
scores = rng.random(n).astype(np.float32)
small = pydl.ops.nms(boxes[:1000], scores[:1000], 0.5)  # warm-up: threads and arenas exist
with open("/proc/self/statm") as f:
    vsize = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vsize + (96 << 20), resource.RLIM_INFINITY))
try:
    pydl.ops.nms(boxes, scores, 0.5)
except MemoryError as e:
    print("MemoryError:", e)
else:
    print("no error")
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
assert np.array_equal(pydl.ops.nms(boxes[:1000], scores[:1000], 0.5), small)
print("ok")
"""


@pytest.mark.skipif(SANITIZED, reason="ASan aborts on a failed allocation and cannot run under RLIMIT_AS")
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux")
def test_kernel_allocation_failure_is_memory_error(tmp_path):
    """A real failed allocation inside a kernel (NMS's internal buffers, under an address-space
    limit that the inputs still fit in) raises MemoryError from pydl, and a later call works."""
    r = run_child(_OOM_CHILD, tmp_path, check=False)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "MemoryError: pydl: out of memory" in r.stdout and r.stdout.strip().endswith("ok"), r.stdout


def test_cuda_error_is_runtime_error_with_location():
    """A failed launch (an invalid configuration) raises RuntimeError naming the CUDA error and
    the file:line of the check; the module and the device stay usable."""
    from conftest import _cupy_or_skip
    cp = _cupy_or_skip()
    mod = _backend.cuda()
    a = cp.zeros(1000, cp.float32)
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"cudaError[A-Za-z]+.*module\.cu:\d+"):
            mod._test_bad_launch(_backend.ptr(a), a.size, _backend.stream_ptr(cp))
        mod.fill(_backend.ptr(a), a.size, 2.5, _backend.stream_ptr(cp))
        assert float(a.sum()) == 2500.0
    x = cp.asarray(np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32))
    y = F.max_pool2d(x, 3)
    assert np.array_equal(y.get(), F.max_pool2d(x.get(), 3))


# ---------------------------------------------------------------- 32-bit BLAS ints

@pytest.mark.parametrize("lim", [1, 5, 16])
def test_gemm_chunking_past_blas_int_limit(lim):
    """pydl::gemm cuts dimensions and strides above OpenBLAS's 32-bit ints into legal calls.
    Lowering the limit to `lim` runs those paths on small convolutions (every GEMM shape the
    conv kernels use: im2col tiles, 1x1, per-image, transposed, weight gradients); the results
    match the unchunked ones to float64 rounding."""
    cpu = _backend.cpu()
    rng = np.random.default_rng(11)
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    dy1, dy2, dy3 = r(2, 7, 9, 11), r(2, 5, 7, 9), r(2, 3, 11, 9)
    checks = [
        (lambda x, w: F.conv2d(x, w, padding=1), (2, 6, 9, 11), (7, 6, 3, 3)),
        (lambda x, w: F.conv2d(x, w, stride=2, groups=2), (2, 6, 9, 11), (4, 3, 3, 2)),
        (lambda x, w: F.conv2d(x, w), (2, 6, 7, 9), (5, 6, 1, 1)),
        (lambda x, w: F.conv2d(x, w), (2, 40, 12, 12), (3, 40, 3, 3)),  # deep reduction: per image
        (lambda x, w: F.conv2d_backward(dy1, x, w, padding=1), (2, 6, 9, 11), (7, 6, 3, 3)),
        (lambda x, w: F.conv2d_backward(dy2, x, w), (2, 6, 7, 9), (5, 6, 1, 1)),
        (lambda x, w: F.conv_transpose2d(x, w, stride=2), (2, 6, 5, 4), (6, 3, 3, 3)),
        (lambda x, w: F.conv_transpose2d_backward(dy3, x, w, stride=2), (2, 6, 5, 4), (6, 3, 3, 3)),
    ]
    for i, (fn, xs, ws) in enumerate(checks):
        x, w = r(*xs), r(*ws)
        want = flat_arrays(fn(x, w))
        old = cpu._set_blas_int_max(lim)
        try:
            got = flat_arrays(fn(x, w))
        finally:
            cpu._set_blas_int_max(old)
        assert old == 2 ** 31 - 1
        for g, e in zip(got, want):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-12 * max(1.0, np.abs(e).max()), err_msg=f"check {i}")


# ---------------------------------------------------------------- past 2**31 elements (slow)

BIG = (1, 1, 2 ** 16, 2 ** 15 + 8)  # 2**31 + 2**19 elements: flat indices overflow int32


def _big_input(xp):
    """A (1, 1, 65536, 32776) float32 input whose rows are constant: row h holds h % 7 + 1,
    except one spike per region; built on the device, ~8.6 GB."""
    h = xp.arange(BIG[2], dtype=xp.float32) % 7 + 1
    x = xp.empty(BIG, xp.float32)
    x[...] = h[None, None, :, None]
    return x


@pytest.mark.slow
def test_big_global_avg_pool2d(xp):
    x = _big_input(xp)
    x[0, 0, -1, -1] = 1000.0  # the last element, past 2**31: must be read
    got = float(F.global_avg_pool2d(x)[0, 0, 0, 0])
    rows = np.arange(BIG[2]) % 7 + 1
    want = (rows.sum() * BIG[3] + (1000.0 - rows[-1])) / (BIG[2] * BIG[3])
    assert abs(got - want) <= 1e-5 * want, (got, want)


@pytest.mark.slow
def test_big_max_and_avg_pool2d(xp):
    x = _big_input(xp)
    x[0, 0, -1, -3] = 1000.0  # in the last window, past 2**31
    k = (512, 4097)  # 128 x 8 windows tile the image exactly
    y, ind = F.max_pool2d(x, k, return_indices=True)
    assert y.shape == (1, 1, 128, 8)
    y, ind = to_np(y), to_np(ind)
    assert y[0, 0, -1, -1] == 1000.0
    assert ind[0, 0, -1, -1] == (BIG[2] - 1) * BIG[3] + BIG[3] - 3  # a flat index past 2**31
    # Every window holds whole rows of each value 1..7: its max is 7, at its first row with 7.
    y[0, 0, -1, -1] = 7
    assert (y == 7).all()
    rows = np.arange(BIG[2]) % 7 + 1
    first7 = np.array([r0 + int(np.argmax(rows[r0:r0 + 512] == 7)) for r0 in range(0, BIG[2], 512)])
    want_ind = first7[:, None] * BIG[3] + np.arange(8)[None, :] * 4097
    want_ind[-1, -1] = ind[0, 0, -1, -1]
    assert np.array_equal(ind[0, 0], want_ind)
    # Window sums stay below 2**24 and are integers, so even float32 sums are exact here.
    a = to_np(F.avg_pool2d(x, k))
    want = rows.reshape(128, 512).mean(axis=1)[:, None].repeat(8, axis=1)
    want[-1, -1] += (1000.0 - rows[-1]) / (512 * 4097)
    np.testing.assert_allclose(a[0, 0], want, rtol=1e-6)


@pytest.mark.slow
def test_big_batch_norm_eval(xp):
    x = _big_input(xp)
    x[0, 0, -1, -1] = 50.0
    m, v = xp.asarray([2.0], xp.float32), xp.asarray([4.0 - 1e-5], xp.float32)
    y = F.batch_norm(x, m, v, training=False)  # (x - 2) / 2
    del x
    assert float(y[0, 0, -1, -1]) == 24.0
    assert float(y[0, 0, 5, 123]) == ((5 % 7 + 1) - 2) / 2
    assert float(y[0, 0, -1, -2]) == ((BIG[2] - 1) % 7 + 1 - 2) / 2


@pytest.mark.slow
def test_big_pointwise_conv2d(xp):
    """1x1 conv: the GEMM's leading dimension is H*W > 2**31 (past OpenBLAS's 32-bit ints)."""
    x = _big_input(xp)
    x[0, 0, -1, -1] = 100.0
    y = F.conv2d(x, xp.asarray([[[[2.0]]]], xp.float32), xp.asarray([0.5], xp.float32))
    del x
    assert y.shape == BIG
    assert float(y[0, 0, -1, -1]) == 200.5 and float(y[0, 0, 0, 0]) == 2.5
    assert float(y[0, 0, -1, 0]) == 2 * ((BIG[2] - 1) % 7 + 1) + 0.5


def to_np(a):
    return a if isinstance(a, np.ndarray) else a.get()
