"""The fused CIARD multi-teacher loss, forward + backward (docs/performance.md, "Benchmarks").

For each class count C (B = 128 by default), one CIARD loss evaluation and its backward with a
random upstream gradient on (L_adv, L_nat, L_push), 0-d device tensors for τ:
  triton         kernels.distill_loss_triton (2 launches forward, 1 backward; GPU, or CPU with
                 --interpret, whose timings are meaningless)
  eager          kernels.reference.distill_loss under autograd (the torch composition)
  torch.compile  torch.compile(reference.distill_loss)
On CUDA the "syncs" column runs one fwd+bwd under torch.cuda.set_sync_debug_mode("error").

    python benchmarks/bench_losses.py                   # CPU: eager only, a few seconds
    python benchmarks/bench_losses.py --full --json benchmarks/results/losses_h100.json
"""
import argparse
import os
import sys

import torch

import common


def make_inputs(batch, classes, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = [torch.randn(batch, classes, device=device, generator=gen).mul_(3).to(dtype) for _ in range(5)]
    s_adv, s_nat = (t.requires_grad_() for t in logits[:2])
    labels = torch.randint(0, classes, (batch,), device=device, generator=gen)
    taus = (torch.tensor(1.3, device=device), torch.tensor(1.7, device=device))
    upstream = tuple(torch.randn(3, device=device, generator=gen).unbind(0))
    return (s_adv, s_nat, *logits[2:], labels, *taus, 5.0), upstream


def fwd_bwd(fn, inputs, upstream):
    """One loss evaluation and the gradient w.r.t. the two student logits (no .grad accumulation)."""
    def run():
        outs = fn(*inputs)
        return torch.autograd.grad(outs[:3], inputs[:2], upstream)
    return run


def sync_free(run, device):
    """'none' if `run` completes under CUDA sync-debug mode 'error', else the error's first line."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        verdict = "none"
    except RuntimeError as exc:
        verdict = str(exc).splitlines()[0][:60]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return verdict


def loss_rows(args, device):
    from ciard_fast.kernels import reference

    impls = []
    if device.type == "cuda" or args.interpret:
        try:
            from ciard_fast.kernels.distill_loss_triton import distill_loss as fused
        except ImportError as exc:
            print(f"[skip] triton: not importable ({exc})")
        else:
            impls.append(("triton", "interpreter: timing meaningless" if device.type == "cpu" else "fused", fused))
    else:
        print("[skip] triton on CPU: runs only under the interpreter (--interpret), whose timings are meaningless")
    impls.append(("eager", "reference composition", reference.distill_loss))
    if args.compile:
        impls.append(("torch.compile", "compiled reference", torch.compile(reference.distill_loss)))
    else:
        print("[skip] torch.compile: off on CPU by default (compiling takes minutes on 2 cores); pass --compile")

    rows = []
    for classes in args.classes:
        inputs, upstream = make_inputs(args.batch, classes, args.dtype, device)
        group = []
        for impl, note, fn in impls:
            run = fwd_bwd(fn, inputs, upstream)
            seconds = common.measure(run, device, repeats=args.repeats, warmup=args.warmup)
            group.append({"impl": impl, "note": note, "batch": args.batch, "classes": classes,
                          "dtype": common.dtype_name(args.dtype), "us": seconds * 1e6,
                          "host_syncs": sync_free(run, device)})
        eager_us = next(r["us"] for r in group if r["impl"] == "eager")
        for r in group:
            r["speedup_vs_eager"] = eager_us / r["us"]
        rows += group
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, default_repeats=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 200])
    parser.add_argument("--dtype", type=common.parse_dtype, default=torch.float32, help="logits dtype")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="add torch.compile rows (default: on for CUDA, off on CPU)")
    parser.add_argument("--interpret", action="store_true",
                        help="run the Triton rows on CPU through TRITON_INTERPRET=1 (correctness only)")
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    if args.full:
        args.repeats = max(args.repeats, 100)
        args.warmup = max(args.warmup, 10)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    common.apply_threads(args)
    device = torch.device(args.device)
    info = common.device_info(device)
    print(f"device: {info['device']} | torch {info['torch']} | triton {info['triton']} | "
          f"batch {args.batch} | {common.dtype_name(args.dtype)}")
    rows = loss_rows(args, device)
    common.print_table(f"CIARD loss forward + backward, B = {args.batch} (median of {args.repeats})", rows,
                       [("classes", "C", None), ("impl", "impl", None), ("us", "µs", "{:.1f}"),
                        ("speedup_vs_eager", "vs eager", "{:.2f}x"), ("host_syncs", "syncs", None),
                        ("note", "note", None)])
    if args.json:
        config = {k: (common.dtype_name(v) if isinstance(v, torch.dtype) else v) for k, v in vars(args).items()}
        common.write_json(args.json, "bench_losses", rows, device, config)


if __name__ == "__main__":
    sys.exit(main())
