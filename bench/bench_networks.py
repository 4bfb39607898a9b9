"""Whole-network benchmark: pydl.models against PyTorch eager and ONNX Runtime on the CPU.

    python bench/bench_networks.py                          # every network (run.py leads with this)
    python bench/bench_networks.py --networks resnet18 --quick --json out.json
    python bench/bench_networks.py --user                   # CNNs pydl.models lacks, via pydl.functional

For each network (224x224, float32): evaluation forward at batch 1 and 8, and for resnet18 and
mobilenet_v2 a training step (forward, cross entropy, backward, SGD step) at batch 8.
pydl runs the model fused by pydl.nn.utils.fuse for evaluation and the unfused model in train
mode for the step; PyTorch the torchvision model (eval and no_grad for inference); ONNX Runtime
the torchvision model exported to ONNX (CPUExecutionProvider), when onnx and onnxruntime are
installed. ``--user`` (or naming them) adds CNNs that pydl.models does not define (VGG-11-BN,
DenseNet-121, GoogLeNet, SqueezeNet 1.1, a DeepLab-style dilated ResNet-50), evaluation only,
which pydl runs as a user writes them: one pydl.functional call per torchvision layer, NumPy for
concatenation and residual adds, unfused (bench/functional_net.py).

Each framework runs in its own worker process (this file with --worker), started by the
driver with the machine's default threading, all on the same weights and input: the torch
worker builds the torchvision model from a fixed seed with random batch-norm statistics and
affine parameters (so that no batch norm is the identity) and writes its state_dict, the input
and the float64 reference outputs (the model in .double()) to .npz files that the others load.
Before timing, pydl's and ONNX Runtime's outputs are checked against that reference (max abs
difference / max abs); for the training step, pydl's logits and parameter gradients. Without
PyTorch, pydl alone runs: its own seeded initialization, checked against its unfused model in
float64.

Timing: one warm-up (the check run), then rounds in which every framework in turn takes the
median of several runs (time.perf_counter; 2 in the first round, then as many as the fastest
framework runs in 0.3 s, 2 to 10); each framework's best round is reported.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

import functional_net  # bench/, the script's directory (run.py puts it on the path too)

MODELS = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2"]
USER_MODELS = list(functional_net.NETWORKS)  # pydl side: functional_net.FunctionalNet, eval only
TRAIN_MODELS = ("resnet18", "mobilenet_v2")
EVAL_BATCHES = (1, 8)
TRAIN_BATCH = 8
SIZE = 224
SEED = 0
LR, MOMENTUM = 1e-3, 0.9  # a small step: weights stay finite however many steps the timing takes
BOUND = 1e-4              # float32 parity bound on the outputs (eval logits, train-mode logits)
GRAD_FACTOR = 4           # pydl's gradient error may be this many times PyTorch's float32 one
FRAMEWORKS = ("pydl", "torch", "ort")
NAMES = {"pydl": "pydl", "torch": "PyTorch", "ort": "ONNX Runtime"}


def row_keys(model):
    keys = [f"eval{b}" for b in EVAL_BATCHES]
    if model in TRAIN_MODELS:
        keys.append(f"train{TRAIN_BATCH}")
    return keys


def rel_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.max(np.abs(want))
    diff = np.max(np.abs(got - want))
    return float(diff / scale) if scale > 0 else float(diff)


def files(workdir, model):
    base = os.path.join(workdir, model)
    return {"weights": base + ".weights.npz", "data": base + ".data.npz", "grads": base + ".grads.npz",
            "onnx": base + ".onnx", "graph": base + ".graph.json"}


def make_input(rng):
    x = rng.standard_normal((TRAIN_BATCH, 3, SIZE, SIZE), dtype=np.float32)
    y = rng.integers(0, 1000, TRAIN_BATCH)
    return x, y


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


# ---------------------------------------------------------------- workers

class PydlWorker:
    """pydl.models: fused for evaluation, unfused in train mode with pydl.optim.SGD for the step."""

    def __init__(self, workdir):
        import pydl.models  # noqa: F401
        import pydl.nn
        import pydl.optim

        self.pydl, self.nn, self.optim = pydl, pydl.nn, pydl.optim
        self.workdir = workdir
        self.fns = {}

    def _model(self, name):
        return getattr(self.pydl.models, name)()

    def prepare(self, model, onnx=False):
        """Without PyTorch: pydl's own seeded init and random batch norms; the reference is the
        unfused model in float64."""
        if model in USER_MODELS:
            raise ValueError(f"{model}: needs PyTorch (its graph and weights come from torchvision)")
        f = files(self.workdir, model)
        self.nn.init.manual_seed(SEED)
        m = self._model(model)
        rng = np.random.default_rng(SEED + 1)
        for mod in m.modules():
            if isinstance(mod, self.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean[...] = rng.normal(0, 0.2, c)
                mod.running_var[...] = rng.uniform(0.5, 1.5, c)
                mod.weight.data[...] = rng.uniform(0.5, 1.5, c)
                mod.bias.data[...] = rng.normal(0, 0.2, c)
        m.save(f["weights"])
        x, y = make_input(rng)
        ref = copy.deepcopy(m).double().eval()
        data = {"x": x, "y": y, "eval": ref(x.astype(np.float64))}
        if model in TRAIN_MODELS:
            ref.train()
            _no_dropout(ref, self.nn.Dropout)
            crit = self.nn.CrossEntropyLoss()
            data["train"] = ref(x.astype(np.float64))
            crit(data["train"], y)
            ref.backward(crit.backward())
            np.savez(f["grads"], **{k: p.grad for k, p in ref.named_parameters()})
        np.savez(f["data"], **data)
        return {}

    def setup(self, model):
        self.fns = {}
        f = files(self.workdir, model)
        if model in USER_MODELS:
            with np.load(f["weights"]) as wts:
                fused = functional_net.FunctionalNet(f["graph"], dict(wts))
            m = None
        else:
            m = self._model(model)
            m.load(f["weights"])
            fused = self.nn.utils.fuse(m)
        out, err, warm = {}, {}, {}
        with np.load(f["data"]) as d:
            x8, y, ref = d["x"], d["y"], d["eval"]
            ref_train = d["train"] if "train" in d.files else None
        for b in EVAL_BATCHES:
            x = np.ascontiguousarray(x8[:b])
            self.fns[f"eval{b}"] = lambda x=x: fused(x)
            out, warm[f"eval{b}"] = timed(self.fns[f"eval{b}"])
            err[f"eval{b}"] = rel_error(out, ref[:b])
        if ref_train is not None:
            m.train()
            crit = self.nn.CrossEntropyLoss()
            opt = self.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM)

            def step(check=False):
                opt.zero_grad()
                logits = m(x8)
                crit(logits, y)
                m.backward(crit.backward())
                got = (logits, {k: p.grad.copy() for k, p in m.named_parameters()}) if check else None
                opt.step()
                return got

            # The check step runs without dropout (it draws random masks), as the reference does.
            drop = _no_dropout(m, self.nn.Dropout)
            (logits, grads), warm["train8"] = timed(lambda: step(check=True))
            for mod, p in drop:
                mod.p = p
            err["train8"] = rel_error(logits, ref_train)
            with np.load(f["grads"]) as g:
                err["grads8"] = grad_error(grads, g)
            self.fns["train8"] = step
        return {"rel_err": err, "warm_ms": warm}


def _no_dropout(m, dropout_cls):
    """Set every Dropout's p to 0; returns [(module, old p)] to restore."""
    old = [(mod, mod.p) for mod in m.modules() if isinstance(mod, dropout_cls)]
    for mod, _ in old:
        mod.p = 0.0
    return old


def grad_error(grads, ref):
    """max abs difference over every parameter gradient / max abs over all of them (one scale:
    a gradient that vanishes, a norm's bias before a train-mode norm, has no relative error
    of its own to speak of). At 224x224 and batch 8 the float32 backward through fifty
    train-mode batch norms of a randomly initialized network loses digits in any framework
    (MobileNetV2: pydl 1.2e-2, PyTorch 1.3e-2), so pydl's is held against PyTorch's float32
    error, not against BOUND."""
    scale = max(float(np.max(np.abs(ref[k]))) for k in ref.files)
    diff = max(float(np.max(np.abs(np.asarray(grads[k], np.float64) - ref[k]))) for k in ref.files)
    return diff / scale


class TorchWorker:
    """torchvision models in PyTorch eager; also writes the shared weights, input and references."""

    def __init__(self, workdir):
        import torch
        import torchvision

        self.torch, self.tvm = torch, torchvision.models
        self.workdir = workdir
        self.fns = {}
        self.models = {}

    def prepare(self, model, onnx=False):
        torch = self.torch
        f = files(self.workdir, model)
        torch.manual_seed(SEED)
        tv = (functional_net.build_torch(model) if model in USER_MODELS else getattr(self.tvm, model)(weights=None))
        tv = tv.eval()
        if model in USER_MODELS:
            functional_net.export(tv, f["graph"])
        g = torch.Generator().manual_seed(SEED + 1)
        with torch.no_grad():
            for mod in tv.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.2, generator=g)
                    mod.running_var.uniform_(0.5, 1.5, generator=g)
                    mod.weight.uniform_(0.5, 1.5, generator=g)
                    mod.bias.normal_(0, 0.2, generator=g)
        np.savez(f["weights"], **{k: v.numpy() for k, v in tv.state_dict().items()})
        x, y = make_input(np.random.default_rng(SEED + 1))
        ref = copy.deepcopy(tv).double()
        x64 = torch.from_numpy(x).double()
        with torch.no_grad():
            data = {"x": x, "y": y, "eval": ref(x64).numpy()}
        if model in TRAIN_MODELS:
            ref.train()
            _no_dropout(ref, torch.nn.Dropout)
            logits = ref(x64)
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
            data["train"] = logits.detach().numpy()
            np.savez(f["grads"], **{k: p.grad.numpy() for k, p in ref.named_parameters()})
        np.savez(f["data"], **data)
        del ref
        if onnx:
            # The TorchScript exporter: the dynamo one needs onnxscript, which the bench extra
            # does not pull in. A dynamic batch axis serves batch 1 and 8 from one file.
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(tv, (torch.from_numpy(x[:1]),), f["onnx"], dynamo=False, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        self.models[model] = tv
        return {}

    def setup(self, model):
        torch = self.torch
        self.fns = {}
        tv = self.models.pop(model)
        self.models.clear()
        f = files(self.workdir, model)
        with np.load(f["data"]) as d:
            x8, y, ref = torch.from_numpy(d["x"]), torch.from_numpy(d["y"]), d["eval"]
            ref_train = d["train"] if "train" in d.files else None
        err, warm = {}, {}
        for b in EVAL_BATCHES:
            x = x8[:b].contiguous()

            def fwd(x=x):
                with torch.no_grad():
                    return tv(x)

            self.fns[f"eval{b}"] = fwd
            out, warm[f"eval{b}"] = timed(fwd)
            err[f"eval{b}"] = rel_error(out.numpy(), ref[:b])
        if ref_train is not None:
            tt = copy.deepcopy(tv).train()
            opt = torch.optim.SGD(tt.parameters(), lr=LR, momentum=MOMENTUM)

            def step(check=False):
                opt.zero_grad()
                logits = tt(x8)
                torch.nn.functional.cross_entropy(logits, y).backward()
                got = (logits.detach().numpy(), {k: p.grad.numpy().copy() for k, p in tt.named_parameters()}) \
                    if check else None
                opt.step()
                return got

            # PyTorch's float32 error is the yardstick of pydl's gradients (see grad_error).
            drop = _no_dropout(tt, torch.nn.Dropout)
            (logits, grads), warm["train8"] = timed(lambda: step(check=True))
            for mod, p in drop:
                mod.p = p
            err["train8"] = rel_error(logits, ref_train)
            with np.load(f["grads"]) as g:
                err["grads8"] = grad_error(grads, g)
            self.fns["train8"] = step
        return {"rel_err": err, "warm_ms": warm}


class OrtWorker:
    """ONNX Runtime, CPUExecutionProvider, on the torch worker's ONNX export."""

    def __init__(self, workdir):
        import onnxruntime

        self.ort = onnxruntime
        self.workdir = workdir
        self.fns = {}

    def setup(self, model):
        self.fns = {}
        f = files(self.workdir, model)
        sess = self.ort.InferenceSession(f["onnx"], providers=["CPUExecutionProvider"])
        with np.load(f["data"]) as d:
            x8, ref = d["x"], d["eval"]
        err, warm = {}, {}
        for b in EVAL_BATCHES:
            x = np.ascontiguousarray(x8[:b])
            self.fns[f"eval{b}"] = lambda x=x: sess.run(None, {"x": x})[0]
            out, warm[f"eval{b}"] = timed(self.fns[f"eval{b}"])
            err[f"eval{b}"] = rel_error(out, ref[:b])
        return {"rel_err": err, "warm_ms": warm}


WORKERS = {"pydl": PydlWorker, "torch": TorchWorker, "ort": OrtWorker}


def worker_main(kind, workdir):
    """Read one JSON command a line on stdin, answer one JSON line. The answers go to a private
    copy of stdout; fd 1 itself points at stderr, so whatever a library prints cannot garble them."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    w = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("cmd")
        if op == "quit":
            break
        try:
            if w is None:
                w = WORKERS[kind](workdir)
            if op == "start":
                out = {}
            elif op == "time":
                fn = w.fns[cmd["key"]]
                ms = []
                for _ in range(cmd["runs"]):
                    ms.append(timed(fn)[1])
                out = {"ms": ms}
            else:
                out = getattr(w, op)(**cmd)
        except Exception:
            out = {"error": traceback.format_exc()}
        reply.write(json.dumps(out) + "\n")
        reply.flush()


# ---------------------------------------------------------------- driver

class Worker:
    def __init__(self, kind, workdir):
        self.kind = kind
        # The machine's default threading: the environment is passed on as it is.
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind, "--dir", workdir],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, cmd, **kw):
        self.send(cmd, **kw)
        return self.recv()

    def send(self, cmd, **kw):
        self.cmd = cmd
        self.proc.stdin.write(json.dumps(dict(cmd=cmd, **kw)) + "\n")
        self.proc.stdin.flush()

    def recv(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker exited (code {self.proc.wait()})")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.kind} worker, {self.cmd}:\n{out['error']}")
        return out

    def close(self):
        if self.proc.poll() is None:
            try:
                self("quit")
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
        self.proc.wait()


def available(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def frameworks_found(no_torch=False):
    """Which workers can run, from what is installed (found, not imported: the driver stays light)."""
    fws = ["pydl"]
    if not no_torch and available("torch", "torchvision"):
        fws.append("torch")
        if available("onnx", "onnxruntime"):
            fws.append("ort")
    return fws


def plan(quick):
    """(rounds, runs in the first round, seconds per framework in a later round, least and most
    runs in a later round). The default run fits 3 minutes on 2 cores: the 50-layer networks at
    batch 8 and ResNet-18's training step take 0.4-1.5 s a call, so they get 2 + 2 + 2 runs
    (9 + 9 + 9 cost half a minute more); batch 1 gets up to 10 a round."""
    return (1, 2, 0.0, 2, 2) if quick else (3, 2, 0.3, 2, 10)


def run(names=None, quick=False, no_torch=False, log=print):
    """Run the network benchmark; returns {"info", "rows", "summary"}."""
    names = check_names(names)
    fws = frameworks_found(no_torch)
    start = time.perf_counter()
    rounds, first, target_s, lo, hi = plan(quick)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pydl-bench-") as tmp:
        workers = {k: Worker(k, tmp) for k in fws}
        try:
            # The imports (seconds for torch) overlap. A framework that is installed but does not
            # import (a broken build) drops out, with its error.
            for w in workers.values():
                w.send("start")
            for k in list(workers):
                if k not in workers:
                    continue
                try:
                    workers[k].recv()
                except RuntimeError as e:
                    log(f"{NAMES[k]} left out: {str(e).strip().splitlines()[-1]}")
                    for gone in [k, "ort"] if k == "torch" else [k]:
                        if gone in workers:
                            workers.pop(gone).close()
            fws = list(workers)
            maker = workers["torch" if "torch" in fws else "pydl"]
            for model in names:
                t0 = time.perf_counter()
                maker("prepare", model=model, onnx="ort" in fws)
                # The checks run side by side (their times only serve as warm-ups).
                for w in workers.values():
                    w.send("setup", model=model)
                setup = {k: w.recv() for k, w in workers.items()}
                log(f"{model}: prepared and checked in {time.perf_counter() - t0:.1f} s")
                for key in row_keys(model):
                    rows.append(_time_row(model, key, workers, setup, rounds, first, target_s, lo, hi, log))
        finally:
            for w in workers.values():
                w.close()
    reference = "PyTorch float64" if "torch" in fws else "pydl unfused float64"
    info = {"frameworks": [NAMES[k] for k in fws], "reference": reference, "rounds": rounds,
            "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - start, 1)}
    return {"info": info, "rows": rows, "summary": summary(rows)}


def _time_row(model, key, workers, setup, rounds, first, target_s, lo, hi, log):
    mode = key.rstrip("0123456789")
    batch = int(key[len(mode):])
    here = [k for k in workers if key in setup[k]["warm_ms"]]
    best, runs, used, medians = {}, first, [], {k: [] for k in here}
    for _ in range(rounds):
        used.append(runs)
        for k in here:
            time.sleep(0.1)  # the last runtime's OpenMP/BLAS threads spin a while after its call
            medians[k].append(statistics.median(workers[k]("time", key=key, runs=runs)["ms"]))
            best[k] = min(medians[k])
        # The same number of runs for everyone in a round; after the first, as many as the
        # fastest framework runs in target_s.
        runs = max(lo, min(hi, round(target_s / (min(best.values()) * 1e-3))))
    row = {"model": model, "mode": mode, "batch": batch, "runs": used, "round_ms": medians}
    for k in FRAMEWORKS:
        row[f"rel_err_{k}"] = setup[k]["rel_err"].get(key) if k in setup else None
    for k in ("pydl", "torch"):
        row[f"grad_err_{k}"] = setup[k]["rel_err"].get(f"grads{batch}") if k in setup and mode == "train" else None
    for k in FRAMEWORKS:
        row[f"{k}_ms"] = best.get(k)
    for k in ("torch", "ort"):
        row[f"x_{k}"] = best[k] / best["pydl"] if k in best else None
    log(f"  {model:<16} {mode:<5} b{batch}  pydl {row['pydl_ms']:.1f} ms  "
        + "  ".join(f"{NAMES[k]} {best[k]:.1f} ms" for k in ("torch", "ort") if k in best)
        + f"  (rel err {_fmt(row['rel_err_pydl'], '{:.1e}')}"
        + (f", gradients {_fmt(row['grad_err_pydl'], '{:.1e}')}" if mode == "train" else "")
        + (f" (PyTorch float32 {row['grad_err_torch']:.1e})" if row["grad_err_torch"] is not None else "")
        + f", runs per round {'/'.join(map(str, used))})")
    return row


def _geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def summary(rows):
    ev = [r for r in rows if r["mode"] == "eval"]
    return {"geomean_x_torch_eval": _geomean([r["x_torch"] for r in ev]),
            "geomean_x_ort_eval": _geomean([r["x_ort"] for r in ev]),
            "max_rel_err": max([r[k] for r in rows for k in ("rel_err_pydl", "rel_err_ort") if r[k] is not None],
                               default=None)}


def _fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def markdown(result):
    lines = ["| model | mode | batch | rel err pydl | rel err ORT | pydl ms | PyTorch ms | ORT ms | x PyTorch "
             "| x ORT |", "|" + "---|" * 10]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {_fmt(r['rel_err_pydl'], '{:.1e}')} | "
                     f"{_fmt(r['rel_err_ort'], '{:.1e}')} | {_fmt(r['pydl_ms'])} | {_fmt(r['torch_ms'])} | "
                     f"{_fmt(r['ort_ms'])} | {_fmt(r['x_torch'], '{:.2f}')} | {_fmt(r['x_ort'], '{:.2f}')} |")
    s, info = result["summary"], result["info"]
    lines.append("")
    lines.append(f"Geometric mean over the eval rows: x PyTorch {_fmt(s['geomean_x_torch_eval'], '{:.2f}')}, "
                 f"x ORT {_fmt(s['geomean_x_ort_eval'], '{:.2f}')} (their time / pydl's; > 1: pydl is faster). "
                 f"rel err against {info['reference']}.")
    train = [r for r in result["rows"] if r["mode"] == "train"]
    if train:
        lines.append("Train rows: rel err of the train-mode logits; parameter gradients (all, one scale) "
                     + ", ".join(f"{r['model']} {_fmt(r['grad_err_pydl'], '{:.1e}')}"
                                 + (f" (PyTorch float32 {r['grad_err_torch']:.1e})" if r["grad_err_torch"] else "")
                                 for r in train) + ".")
    missing = [NAMES[k] for k in ("torch", "ort") if NAMES[k] not in info["frameworks"]]
    if missing:
        lines.append(f"Not found or not usable: {' and '.join(missing)} (pip install \".[bench]\" torch torchvision): "
                     "pydl's own times only.")
    return "\n".join(lines)


def parity_failures(result):
    bad = []
    for r in result["rows"]:
        if any(r[k] is not None and not r[k] <= BOUND for k in ("rel_err_pydl", "rel_err_ort")):
            bad.append(r)
        elif r["grad_err_torch"] is not None and not r["grad_err_pydl"] <= max(BOUND, GRAD_FACTOR * r["grad_err_torch"]):
            bad.append(r)
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", action="append", metavar="NAME",
                   help=f"only these networks (repeatable or comma-separated): {', '.join(MODELS + USER_MODELS)}")
    p.add_argument("--user", action="store_true", help=f"the CNNs pydl.models lacks: {', '.join(USER_MODELS)}")
    p.add_argument("--quick", action="store_true", help="one round of 2 runs")
    p.add_argument("--no-torch", action="store_true", help="pydl alone, even if PyTorch is installed")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.dir)
        return 0
    names = parse_names(args.networks)
    if args.user:
        names = (names or []) + USER_MODELS
    result = run(names, args.quick, args.no_torch)
    print()
    print(markdown(result))
    print(f"Total wall time {result['info']['seconds']:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"networks": result}, f, indent=1)
    return report_parity(result)


def check_names(names, user=True):
    """names, or every pydl.models network when None; SystemExit on an unknown one (user=False:
    pydl.models networks only)."""
    known = MODELS + USER_MODELS if user else MODELS
    bad = [n for n in names or [] if n not in known]
    if bad:
        raise SystemExit(f"--networks: unknown {', '.join(bad)}; choose from {', '.join(known)}")
    return names or MODELS


def parse_names(values):
    return [n for v in values or [] for n in v.split(",") if n] or None


def report_parity(result):
    bad = parity_failures(result)
    if bad:
        print(f"PARITY FAILED on {len(bad)} network row(s) (rel err > {BOUND:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
