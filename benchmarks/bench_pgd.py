"""PGD attack throughput, and the fused PGD-step kernel alone (docs/performance.md, "Benchmarks").

Table 1, PGD-k attack (images/s), same model, batch, precision, all in one run:
  ours           ciard_fast.attacks.pgd (fused step + random start through the kernel dispatch)
  eager          a plain PGD loop written here, the reference formulation (Madry et al.)
  torch.compile  the same loop with torch.compile'd model and update
  torchattacks   torchattacks.PGD, when installed
Table 2, one PGD step x ← clamp₀₁(Π_ε(x + α·sign(g))) on its own, in GB/s of memory traffic
(read x, x₀, g; write x) against the device's measured copy bandwidth:
  triton         the fused kernel (GPU; on CPU only with --interpret, and then meaningless)
  eager          kernels.reference.pgd_step (five elementwise torch ops)
  torch.compile  torch.compile(reference.pgd_step)
  native         libciard_native (kernels/native, C or CUDA) when built with CMake, fp32 only

    python benchmarks/bench_pgd.py                      # CPU-sized defaults, < 1 minute on 2 cores
    python benchmarks/bench_pgd.py --full --json benchmarks/results/pgd_h100.json   # GPU
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import common

EPS, ALPHA = 8 / 255, 2 / 255


class TinyConvNet(nn.Module):
    """CPU default model: two 3×3 convolutions, pooling, a linear head (~6.6 MFLOP forward per 32×32 image)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_model(name, num_classes, device):
    if name == "tiny":
        model = TinyConvNet(num_classes)
    else:
        from ciard_fast.models import create_model  # written alongside; imported only when asked
        model = create_model(name, num_classes=num_classes)
    return model.to(device).eval()


def eager_pgd(model, x, y, eps, alpha, steps, update=None):
    """Reference formulation: uniform start, CE ascent, sign step, project, clamp."""
    update = update or eager_update
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv).float(), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = update(x_adv.detach(), x, grad, eps, alpha)
    return x_adv


def eager_update(x_adv, x, grad, eps, alpha):
    x_adv = x_adv + alpha * grad.sign()
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, 0, 1)


def attack_rows(args, device):
    model = build_model(args.model, 10, device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device, generator=gen)
    y = torch.randint(0, 10, (args.batch,), device=device, generator=gen)
    autocast = torch.autocast(device.type, dtype=args.dtype, enabled=args.dtype != torch.float32)
    candidates = []

    try:
        from ciard_fast.attacks.pgd import pgd
        from ciard_fast import kernels
    except ImportError as exc:
        print(f"[skip] ours: ciard_fast.attacks.pgd not importable ({exc})")
    else:
        def ours():
            # validate=False: the training engine's mode (no host sync); the other rows check nothing either.
            return pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=args.steps, random_start="uniform", validate=False)
        candidates.append(("ours", f"kernels={kernels.backend_for(x)}", ours))

    candidates.append(("eager", "reference formulation",
                       lambda: eager_pgd(model, x, y, EPS, ALPHA, args.steps)))

    if args.compile:
        compiled_model = torch.compile(model)
        compiled_update = torch.compile(eager_update)
        candidates.append(("torch.compile", "model + update compiled",
                           lambda: eager_pgd(compiled_model, x, y, EPS, ALPHA, args.steps, compiled_update)))
    else:
        print("[skip] torch.compile rows: off on CPU by default (compiling takes minutes on 2 cores); "
              "pass --compile")

    try:
        import torchattacks
    except ImportError:
        print("[skip] torchattacks: not installed")
    else:
        atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=args.steps, random_start=True)
        candidates.append(("torchattacks", f"torchattacks {torchattacks.__version__}", lambda: atk(x, y)))

    rows = []
    for impl, note, fn in candidates:
        def run(fn=fn):
            with autocast:
                return fn()
        seconds = common.measure(run, device, repeats=args.repeats, warmup=args.warmup)
        rows.append({"table": "attack", "impl": impl, "note": note, "model": args.model, "batch": args.batch,
                     "dtype": common.dtype_name(args.dtype), "steps": args.steps, "ms": seconds * 1e3,
                     "images_per_s": args.batch / seconds})
    eager_ms = next(r["ms"] for r in rows if r["impl"] == "eager")
    for r in rows:
        r["speedup_vs_eager"] = eager_ms / r["ms"]
    return rows


def step_rows(args, device, batches):
    from ciard_fast.kernels import reference

    triton_step = None
    if device.type == "cuda" or args.interpret:
        try:
            from ciard_fast.kernels.pgd_step_triton import pgd_step as triton_step
        except ImportError as exc:
            print(f"[skip] triton step: not importable ({exc})")
    else:
        print("[skip] triton step on CPU: runs only under the interpreter (--interpret), whose "
              "timings are meaningless")
    copy_gbs = common.copy_bandwidth(device, nbytes=args.copy_mib * 2**20)
    impls = []
    if triton_step is not None:
        impls.append(("triton", "interpreter: timing meaningless" if device.type == "cpu" else "fused, 1 pass",
                      triton_step))
    impls.append(("eager", "reference.pgd_step", reference.pgd_step))
    from ciard_fast.kernels import native
    lib = native.load()
    if lib is None:
        print("[skip] native: libciard_native not built (cmake -S . -B build && cmake --build build)")
    elif args.dtype != torch.float32 or (device.type == "cuda" and not lib.has_cuda):
        print("[skip] native: the C ABI is fp32 only, and CUDA tensors need a CUDA build")
    else:
        impls.append(("native", f"libciard_native ({'CUDA' if device.type == 'cuda' else 'C'})", lib.pgd_step))
    if args.compile:
        impls.append(("torch.compile", "compiled reference", torch.compile(reference.pgd_step)))

    rows = []
    for batch in batches:
        shape = (batch, 3, args.image_size, args.image_size)
        x0 = torch.rand(shape, device=device).to(args.dtype)
        x = x0.clone()
        grad = torch.randn(shape, device=device).to(args.dtype)
        traffic = 4 * x.numel() * x.element_size()  # read x, x0, g; write x
        for impl, note, fn in impls:
            seconds = common.measure(lambda: fn(x, x0, grad, EPS, ALPHA, out=x), device,
                                     repeats=args.repeats, warmup=args.warmup)
            gbs = traffic / seconds / 1e9
            rows.append({"table": "step", "impl": impl, "note": note, "batch": batch,
                         "dtype": common.dtype_name(args.dtype), "us": seconds * 1e6, "GB_per_s": gbs,
                         "copy_GB_per_s": copy_gbs, "pct_of_copy": 100 * gbs / copy_gbs})
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument("--model", default=None, help="'tiny' (defined here) or a registered model name "
                        "(default: tiny, resnet18 with --full)")
    parser.add_argument("--batch", type=int, default=None, help="attack batch (default 32, 512 with --full)")
    parser.add_argument("--dtype", type=common.parse_dtype, default=torch.float32,
                        help="fp32 | bf16 | fp16: autocast dtype of the attack, storage dtype of the step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--compile", action="store_true", default=None,
                        help="add torch.compile rows (default: on for CUDA, off on CPU)")
    parser.add_argument("--interpret", action="store_true",
                        help="run the Triton row on CPU through TRITON_INTERPRET=1 (correctness only)")
    args = parser.parse_args(argv)
    args.model = args.model or ("resnet18" if args.full else "tiny")
    args.batch = args.batch or (512 if args.full else 32)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    args.copy_mib = 1024 if args.full else 64
    if args.full:
        args.repeats = max(args.repeats, 10)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    common.apply_threads(args)
    device = torch.device(args.device)
    info = common.device_info(device)
    print(f"device: {info['device']} | torch {info['torch']} | triton {info['triton']} | "
          f"model {args.model} | batch {args.batch} | {common.dtype_name(args.dtype)} | PGD-{args.steps}")
    attack = attack_rows(args, device)
    common.print_table(f"PGD-{args.steps} attack, {args.model}, batch {args.batch}, "
                       f"{common.dtype_name(args.dtype)} (median of {args.repeats})", attack,
                       [("impl", "impl", None), ("ms", "ms", "{:.1f}"), ("images_per_s", "images/s", "{:.0f}"),
                        ("speedup_vs_eager", "vs eager", "{:.2f}x"), ("note", "note", None)])
    batches = [args.batch] + ([4096, 32768] if args.full else [])
    step = step_rows(args, device, batches)
    common.print_table(f"PGD step alone, {common.dtype_name(args.dtype)}, [B, 3, {args.image_size}, "
                       f"{args.image_size}] (copy bandwidth {step[0]['copy_GB_per_s']:.0f} GB/s)", step,
                       [("impl", "impl", None), ("batch", "batch", None), ("us", "µs", "{:.1f}"),
                        ("GB_per_s", "GB/s", "{:.1f}"), ("pct_of_copy", "% of copy", "{:.0f}%"),
                        ("note", "note", None)])
    if args.json:
        config = {k: (common.dtype_name(v) if isinstance(v, torch.dtype) else v) for k, v in vars(args).items()}
        common.write_json(args.json, "bench_pgd", attack + step, device, config)


if __name__ == "__main__":
    sys.exit(main())
