"""``ciard-fast doctor``: what works on this machine, checked before a first run trusts it.

    ciard-fast doctor [--device auto|cuda|cpu] [--json PATH]
    >>> report = ciard_fast.doctor(device="cpu")       # a DoctorReport; report.ok, report.checks

Each check prints one line — PASS, FAIL or SKIP and why — and the JSON lists every check with
its status, detail, seconds and data. Exit status 0 when no check failed, 1 otherwise (a skipped
check is not a failure: it says what could not be tried here). Under a minute on a 2-core CPU.

Checks, in order:
  versions      torch, triton, CUDA runtime, NVIDIA driver, DALI, apex (informational)
  device        the device, its name, compute capability and memory (CPU: threads)
  kernel:*      for each fused op and dtype (and channels_last for the PGD ops): which backend
                the dispatch picks, and the Triton kernel's self-check against the pure-torch
                reference with its max error (ciard_fast.kernels, docs/performance.md). On CPU
                the kernels run under Triton's interpreter, in a subprocess with
                TRITON_INTERPRET=1 (the switch only works before triton is first imported).
  bf16+channels_last  a zoo model (resnet18, eval-mode BN) forward + backward under bf16
                autocast in channels_last against fp32 NCHW: logits within 5 % (relative L2),
                parameter-gradient cosine > 0.99
  cuda_graphs   PGD-10 through a CUDA graph (attacks/graphs.py) against eager PGD-10, no random
                start (bit-identical) and uniform start (the cache's own first-replay check)
  dali, nccl    whether NVIDIA DALI and NCCL are usable
  throughput    a 5-second probe of the CIARD training step (tiny models on CPU; ResNet-18
                student and teachers in bf16 with CUDA graphs on a GPU): images/s
"""
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time

from .version import __version__

__all__ = ["doctor", "DoctorReport", "Check", "add_arguments", "run"]

STATUSES = ("pass", "fail", "skip")


@dataclasses.dataclass
class Check:
    name: str
    status: str            # pass | fail | skip
    detail: str
    seconds: float = 0.0
    data: dict = dataclasses.field(default_factory=dict)

    def line(self):
        return f"{self.status.upper():4}  {self.name:<34} {self.detail}"


@dataclasses.dataclass
class DoctorReport:
    device: str
    checks: list
    seconds: float
    created: str
    version: str = __version__

    @property
    def ok(self):
        return not any(c.status == "fail" for c in self.checks)

    def to_dict(self):
        return {"ciard_fast": self.version, "device": self.device, "created": self.created,
                "seconds": round(self.seconds, 3), "ok": self.ok,
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def save_json(self, path):
        from .atomic import write_text_atomic
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")


# ---- the checks --------------------------------------------------------------------------------
# Each returns (status, detail, data) and may raise: an exception is a failed check, named.

def _versions(device):
    import torch
    data = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        import triton
        data["triton"] = triton.__version__
    except Exception as exc:  # a broken triton install is itself worth reporting
        data["triton"] = f"not importable ({type(exc).__name__}: {exc})"
    data["driver"] = _driver_version()
    try:
        import nvidia.dali as dali
        data["dali"] = dali.__version__
    except Exception:
        data["dali"] = None
    try:
        import apex  # noqa: F401  (NVIDIA apex; the unrelated PyPI "apex" has no FusedSGD)
        from apex.optimizers import FusedSGD  # noqa: F401
        data["apex"] = getattr(apex, "__version__", "installed")
    except Exception:
        data["apex"] = None
    detail = ", ".join(f"{k} {v}" for k, v in data.items() if v is not None)
    return "pass", detail, data


def _driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _device(device):
    import torch
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        data = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
        ok = (props.major, props.minor) >= (7, 0)  # Triton's minimum
        detail = f"{props.name}, compute capability {data['capability']}, {data['memory_gib']} GiB"
        return ("pass" if ok else "fail"), detail + ("" if ok else " (Triton needs capability >= 7.0)"), data
    data = {"name": "cpu", "logical_cores": os.cpu_count()}
    return "pass", f"CPU, {data['logical_cores']} logical cores (the checks use one torch thread)", data


def kernel_checks(device_name):
    """[(op, dtype, layout, backend, CheckResult as dict or None, error)] for every op/dtype/layout."""
    import torch

    from . import kernels
    device = torch.device(device_name)
    rows = []
    for op in ("pgd_step", "pgd_random_start", "distill_loss"):
        layouts = ("contiguous", "channels_last") if op != "distill_loss" else ("contiguous",)
        for dtype in (torch.float32, torch.bfloat16):
            for layout in layouts:
                probe = torch.zeros((2, 3, 4, 4) if op != "distill_loss" else (2, 10), dtype=dtype, device=device)
                if layout == "channels_last":
                    probe = probe.contiguous(memory_format=torch.channels_last)
                try:
                    backend = kernels.backend_for(probe, op) if device.type == "cuda" else "reference (CPU)"
                    result = dataclasses.asdict(kernels.check_kernel(op, device, dtype, layout))
                    error = None
                except Exception as exc:
                    backend, result, error = None, None, f"{type(exc).__name__}: {exc}"
                rows.append({"op": op, "dtype": str(dtype).replace("torch.", ""), "layout": layout,
                             "backend": backend, "result": result, "error": error})
    return rows


def _kernel_rows(device):
    """Kernel self-checks: in process on CUDA; on CPU in a subprocess under the interpreter."""
    if device.type == "cuda":
        from . import kernels
        if not kernels.triton_available():
            return None, f"triton not importable ({kernels.triton_error()})"
        return kernel_checks(str(device)), None
    code = ("import json, sys, torch; torch.set_num_threads(1); from ciard_fast import kernels, diagnostics\n"
            "if not kernels.triton_available(): print(json.dumps({'error': kernels.triton_error()})); sys.exit(0)\n"
            "print(json.dumps({'rows': diagnostics.kernel_checks('cpu')}))\n")
    env = dict(os.environ, TRITON_INTERPRET="1", CIARD_FAST_KERNELS="auto")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"kernel-check subprocess exited {out.returncode}: {out.stderr.strip()[-600:]}")
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    if "error" in payload:
        return None, f"triton not importable ({payload['error']})"
    return payload["rows"], None


def _kernel_checks_as_checks(device):
    start = time.perf_counter()
    rows, unavailable = _kernel_rows(device)
    if rows is None:
        # On a GPU a missing Triton costs the fused kernels: a finding. On CPU nothing uses them.
        status = "fail" if device.type == "cuda" else "skip"
        return [Check("kernels", status, unavailable, time.perf_counter() - start)]
    checks = []
    for row in rows:
        name = f"kernel:{row['op']}[{row['dtype']},{row['layout']}]"
        result = row["result"]
        where = "interpreter" if device.type == "cpu" else str(device)
        if result is None:
            checks.append(Check(name, "fail", f"self-check could not run: {row['error']}", data=row))
        elif result["ok"]:
            checks.append(Check(name, "pass", f"backend {row['backend']}; Triton ({where}) matches the reference, "
                                              f"max error {result['max_error']:.3g} <= {result['tolerance']:.3g}",
                                result["seconds"] or 0.0, row))
        else:
            checks.append(Check(name, "fail", f"backend {row['backend']}; Triton ({where}): {result['error']}",
                                result["seconds"] or 0.0, row))
    return checks


def _bf16_channels_last(device):
    import copy

    import torch
    import torch.nn.functional as F

    from .models import create_model
    torch.manual_seed(0)
    # Eval mode: with batch statistics a random-init deep net renormalises activations of tiny
    # variance and amplifies bf16 rounding (gradient cosine ~0.95 for ResNet-18, ~0.5 for
    # MobileNetV2 at init); frozen statistics make the forward a fixed function, so the
    # comparison measures the numerics of bf16 and channels_last, not BN at initialisation.
    base = create_model("resnet18", num_classes=10).to(device).eval()
    x = torch.rand(8 if device.type == "cuda" else 4, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (x.shape[0],), device=device)
    results = []
    for bf16 in (False, True):
        model = copy.deepcopy(base)
        xin = x
        if bf16:
            model = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xin)
        F.cross_entropy(logits.float(), y).backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        results.append((logits.detach().float(), grads))
    (ref_logits, ref_grads), (logits, grads) = results
    rel = float((logits - ref_logits).norm() / ref_logits.norm().clamp_min(1e-12))
    cosine = float(F.cosine_similarity(grads.double(), ref_grads.double(), dim=0))
    finite = bool(torch.isfinite(logits).all() and torch.isfinite(grads).all())
    ok = finite and rel < 0.05 and cosine > 0.99
    detail = (f"resnet18 (eval-mode BN) bf16+channels_last vs fp32 NCHW: logits rel. error {rel:.3g} (< 0.05), "
              f"gradient cosine {cosine:.5f} (> 0.99){'' if finite else ', NON-FINITE values'}")
    return ("pass" if ok else "fail"), detail, {"logits_rel_error": rel, "grad_cosine": cosine, "finite": finite}


def _cuda_graphs(device):
    import torch

    from .attacks import graphs
    from .attacks.pgd import pgd
    from .models import create_model
    if device.type != "cuda":
        return "skip", "CUDA graphs need a CUDA device", {}
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10).to(device).eval()
    x = torch.rand(32, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    eager = pgd(model, x, y, steps=10, random_start=None, validate=False)
    cache = graphs.GraphCache()
    import warnings
    with warnings.catch_warnings(record=True) as record, graphs.cuda_graphs(cache):
        warnings.simplefilter("always")
        first = pgd(model, x, y, steps=10, random_start=None, validate=False)
        again = pgd(model, x, y, steps=10, random_start=None, validate=False)
        pgd(model, x, y, steps=10, random_start="uniform", validate=False)
    differ = float((again != eager).float().mean())
    data = {"captures": cache.captures, "replays": cache.replays, "fallbacks": cache.fallbacks,
            "replay_differs_fraction": differ, "warnings": [str(w.message) for w in record]}
    cache.release()
    if cache.fallbacks or not torch.equal(first, eager):
        return "fail", f"graphed PGD-10 fell back or differs: {data['warnings'] or differ}", data
    if differ:
        return "fail", f"replayed PGD-10 differs from eager on {100 * differ:.2f} % of elements", data
    return "pass", (f"PGD-10 (resnet18, batch 32) graphed = eager, bit-identical; {cache.captures} captures, "
                    f"{cache.replays} replay, random-start capture checked against eager"), data


def _dali(device):
    try:
        import nvidia.dali as dali
    except Exception as exc:
        return "skip", f"NVIDIA DALI not installed ({type(exc).__name__}; optional: pip install ciard-fast[dali])", {}
    from .data.dali import import_dali
    import_dali()  # the pieces DaliLoader needs, including the torch plugin
    return "pass", f"NVIDIA DALI {dali.__version__} importable with its PyTorch plugin", {"version": dali.__version__}


def _nccl(device):
    import torch
    import torch.distributed as dist
    if not dist.is_available():
        return "skip", "this torch build has no torch.distributed", {}
    if not dist.is_nccl_available():
        return "skip", "this torch build has no NCCL backend (CPU build): multi-GPU training uses gloo", {}
    if device.type != "cuda":
        return "skip", "NCCL is built in, but needs CUDA devices to run", {}
    version = torch.cuda.nccl.version()
    version = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    return "pass", f"NCCL {version}, {torch.cuda.device_count()} CUDA device(s)", {"version": version}


def _throughput(device, seconds=5.0):
    import torch

    from .attacks.graphs import GraphCache
    from .engine.optim import RunOptimizers
    from .engine.precision import autocast
    from .engine.trainer import step_forward, step_update
    from .methods import AttackSettings, get_method
    from .models import create_model

    cuda = device.type == "cuda"
    names = ("resnet18", "resnet18", "resnet18") if cuda else ("small_cnn", "small_cnn", "small_cnn")
    kwargs = {} if cuda else {"width": 8}
    batch = 128 if cuda else 32
    torch.manual_seed(0)
    models = [create_model(n, num_classes=10, **kwargs).to(device) for n in names]
    if cuda:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    cls = get_method("ciard")
    method = cls(models[0], num_classes=10, epochs=300, robust_teacher=models[1], clean_teacher=models[2],
                 attack=AttackSettings(8 / 255, 2 / 255, 10), device=device)
    optimizer = RunOptimizers(method, 0.9, 5e-4, device)  # the student's and ITT's, as the engine's
    optimizer.set_epoch(100)
    method.start_epoch(100)  # ITT active: the full step
    models[0].train()
    precision = "bf16" if cuda else "fp32"
    cache = GraphCache() if cuda else None
    x = torch.rand(batch, 3, 32, 32, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    sums = {}

    def step():
        out = step_forward(method, optimizer, x, y, lambda: autocast(precision, device), cache)
        step_update(method, optimizer, out, sums)
        return out

    out = step()  # warm-up: first-use costs (kernel checks, capture) are not throughput
    if cuda:
        torch.cuda.synchronize(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = step()
        steps += 1
        if cuda and steps % 5 == 0:
            torch.cuda.synchronize(device)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if cache is not None:
        cache.release()
    loss = float(out["loss"].detach())
    rate = steps * batch / elapsed
    data = {"models": names, "batch": batch, "precision": precision, "steps": steps, "seconds": elapsed,
            "images_per_s": rate, "loss": loss}
    if not torch.isfinite(torch.tensor(loss)):
        return "fail", f"CIARD step loss is {loss} after {steps} steps", data
    what = "ResNet-18 ×3, bf16, channels_last, graphed PGD" if cuda else "small_cnn ×3, fp32"
    return "pass", f"CIARD step ({what}, batch {batch}, PGD-10): {rate:.0f} images/s over {steps} steps", data


_CHECKS = [("versions", _versions), ("device", _device), ("kernels", None), ("bf16+channels_last", _bf16_channels_last),
           ("cuda_graphs", _cuda_graphs), ("dali", _dali), ("nccl", _nccl), ("throughput", _throughput)]


def _resolve(device):
    import torch
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}") from None
    if resolved.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    return resolved


def doctor(device="auto", json_path=None, stream=None):
    """Run every check on `device` ('auto' | 'cuda' | 'cpu'), print one line each to `stream`
    (default stdout; None-like False to print nothing), write `json_path` if given, and return
    the :class:`DoctorReport` (``report.ok``: no check failed)."""
    stream = sys.stdout if stream is None else stream
    begin = time.perf_counter()
    import torch
    device = _resolve(device)
    if json_path:  # checked before a minute of checks, not after (ciard_fast/outputs.py)
        from .outputs import check_output_file

        check_output_file(json_path, option="--json")
    checks = []

    def emit(check):
        checks.append(check)
        if stream:
            print(check.line(), file=stream, flush=True)

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: more intra-op threads only add synchronisation
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        emit(Check("device", "fail", f"--device cuda, but torch {torch.__version__} ({build}) sees no CUDA device; "
                                     "run ciard-fast doctor --device cpu to check the rest"))
    else:
        for name, fn in _CHECKS:
            start = time.perf_counter()
            try:
                if fn is None:
                    for check in _kernel_checks_as_checks(device):
                        emit(check)
                    continue
                status, detail, data = fn(device)
            except Exception as exc:  # a check that crashes has failed, and says how
                status, detail, data = "fail", f"raised {type(exc).__name__}: {exc}", {}
            if status not in STATUSES:
                status, detail = "fail", f"check returned an unknown status {status!r} ({detail})"
            emit(Check(name, status, detail, time.perf_counter() - start, data))
    torch.set_num_threads(threads)
    report = DoctorReport(device=str(device), checks=checks, seconds=time.perf_counter() - begin,
                          created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if json_path:
        report.save_json(json_path)
    return report


# ---- CLI -------------------------------------------------------------------------------------------

def add_arguments(parser):
    from .cli_options import add_option

    add_option(parser, "device", default="auto", choices=("auto", "cuda", "cpu"),
               help="where to run the checks (default: cuda when available)")
    add_option(parser, "json", metavar="PATH", default=None, help="also write every check as JSON to PATH")


def run(args):
    report = doctor(args.device, json_path=args.json)
    failed = [c.name for c in report.checks if c.status == "fail"]
    if [c.name for c in report.checks] == ["device"] and failed:
        return 1  # --device cuda without CUDA: its one FAIL line says it all (nothing else could run)
    skipped = sum(c.status == "skip" for c in report.checks)
    passed = sum(c.status == "pass" for c in report.checks)
    print(f"doctor: {passed} passed, {len(failed)} failed, {skipped} skipped in {report.seconds:.1f} s"
          + (f" — FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        print(f"doctor: wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    from .cli_options import Parser

    parser = Parser(prog="ciard-fast doctor")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
