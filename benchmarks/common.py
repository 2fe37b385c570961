"""Timing helpers shared by the benchmark scripts (bench_pgd, bench_losses, bench_train).

Honest timing: warm-up calls first (compilation, autotuning, allocator growth), then the median
of `repeats` timed calls. On CUDA each call is bracketed by CUDA events and all events are read
after one final synchronisation, so the host never waits between calls (a launch-bound workload
shows its launch gaps in the time, as it should). On CPU, time.perf_counter around each call.
Never used for timed assertions in tests.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

from ciard_fast.atomic import write_text_atomic


def add_common_args(parser, default_repeats=10):
    """--device, --repeats, --warmup, --json, --full: the options every benchmark script takes."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--repeats", type=int, default=default_repeats, help="timed calls; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--json", metavar="PATH", help="also write the rows, with device and versions, as JSON")
    parser.add_argument("--full", action="store_true", help="GPU-sized problem (large batch, real model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    return parser


def apply_threads(args):
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def triton_version():
    """Triton's version string, or None when it is not importable."""
    try:
        import triton
    except Exception:  # absent, or broken on this platform
        return None
    return triton.__version__


def device_info(device):
    """Name and software versions of `device`, for the JSON rows."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        detail = {"memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                  "capability": f"{props.major}.{props.minor}"}
    else:
        name = platform.processor() or platform.machine() or "cpu"
        detail = {"cpu_threads": torch.get_num_threads(), "logical_cores": os.cpu_count()}
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "triton": triton_version(), "python": platform.python_version(), **detail}


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, repeats=10, warmup=2):
    """Median seconds per call of `fn()` (see the module docstring for the method)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if torch.device(device).type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, nbytes=256 * 2**20, repeats=20):
    """Measured device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), device, repeats=repeats, warmup=3)
    return 2 * src.numel() * 4 / seconds / 1e9


def print_table(title, rows, columns):
    """Print `rows` (dicts) as one fixed-width table; `columns` are (key, header, format) triples."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else (fmt.format(value) if fmt else str(value)))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for i, line in enumerate(cells):
        print("  ".join(c.rjust(w) if i and _numeric(c) else c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _numeric(text):
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return False
    return True


def write_json(path, benchmark, rows, device, config):
    """Write {benchmark, date, device info, config, rows} to `path` (directories created)."""
    meta = {"benchmark": benchmark,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **device_info(device)}
    # Each row carries the device and versions too, so rows stay meaningful when collected.
    payload = {**meta, "config": config, "rows": [{**meta, **row} for row in rows]}
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")  # creates the folder; whole or absent
    print(f"\nwrote {path}")


def parse_dtype(name):
    """'fp32' | 'bf16' | 'fp16' (or torch spellings) -> torch.dtype."""
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise argparse.ArgumentTypeError(f"dtype must be one of {', '.join(table)}; got {name!r}")
    return table[name]


def dtype_name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# ---- added for bench_train.py: phase markers, host-sync count, peak FLOP/s -----------------------

class PhaseClock:
    """Attribute the time of a region to named phases with markers (no synchronisation per mark).

    ``mark(label)`` starts phase ``label`` (``None`` ends timing) and is a no-op when the label is
    unchanged, so it can be called from hooks that fire often. On CUDA each mark records an event
    in stream order (the phases are then GPU-timeline intervals, host gaps included); on CPU it
    reads time.perf_counter. ``totals()`` synchronises once and sums the seconds per label.
    """

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks = []
        self.current = None

    def mark(self, label):
        if label == self.current:
            return
        self.current = label
        if self.cuda:
            stamp = torch.cuda.Event(enable_timing=True)
            stamp.record()
        else:
            stamp = time.perf_counter()
        self.marks.append((label, stamp))

    def totals(self):
        if self.cuda:
            torch.cuda.synchronize()
        seconds = {}
        for (label, start), (_, end) in zip(self.marks, self.marks[1:]):
            if label is not None:
                dt = start.elapsed_time(end) / 1e3 if self.cuda else end - start
                seconds[label] = seconds.get(label, 0.0) + dt
        return seconds


def count_cuda_syncs(fn, device):
    """Host synchronisations `fn()` makes on CUDA (sync-debug warnings); None on other devices."""
    if torch.device(device).type != "cuda":
        return None
    import warnings

    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def matmul_tflops(device, dtype=None, n=None, repeats=5):
    """Measured dense matmul throughput (TFLOP/s): bf16 8192³ on CUDA, fp32 1024³ on CPU by default."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = measure(lambda: torch.mm(a, b), device, repeats=repeats, warmup=2)
    return 2 * n ** 3 / seconds / 1e12


# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s, checked in order.
SPEC_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0))


def spec_peak_tflops(device_name):
    """The data-sheet dense bf16 peak for a known GPU name (e.g. 989 for H100 SXM), else None."""
    for key, value in SPEC_PEAK_TFLOPS:
        if key in device_name:
            return value
    return None
