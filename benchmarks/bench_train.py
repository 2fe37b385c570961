"""One CIARD training step end to end: ours vs the reference step (docs/performance.md, "Benchmarks").

Both sides train the same models (same initial weights) on the same synthetic uint8 dataset, at
the same batch, in one run; each step includes getting its batch:
  ours       ciard_fast.methods.ciard.CIARD + a DeviceLoader with TrainConfig()'s options, built as
             ciard_fast.engine builds a run (on CUDA: bf16 autocast, channels_last, fused SGD, the
             CUDA-graphed PGD loop; on CPU: fp32, plain SGD); each step is the body of
             engine.Trainer's loop (zero_grad, training_step, backward, SGD step, after_optimizer_step)
  reference  benchmarks/reference/: the public code's step (fp32, NCHW, eager, host syncs,
             Python-float state, unused R(x)) fed by a per-image PIL loader with no workers and a
             pageable host-to-device copy; cudnn.deterministic as the public script sets it
Printed: ms/step and images/s (median of --repeats after --warmup; CUDA events on GPU,
time.perf_counter on CPU), the ratio, achieved TFLOP/s and MFU, host syncs per step (CUDA), and
where the time goes by phase.

FLOPs: docs/performance.md's per-image forward cost F for the named models at 32×32 (ResNet-18 1.11,
MobileNetV2 0.18, WRN-34-10 13.3, ResNet-56 0.25 GFLOP); any other model or size is counted with
torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add of conv/linear/matmul).
A step costs 26 F_student + 3 F_robust (1 before ITT: no backward) + 2 F_clean per image — the
useful work, the same for both sides (the reference's wasted R(x) is not counted).
Peak: --peak-tflops, else the data-sheet dense bf16 peak for H100/H200 (989 TFLOP/s for SXM),
else a dense matmul measured here (bf16 on CUDA, fp32 on CPU).

Phases (a second, separate run of --profile-steps steps per side): markers at phase changes —
CUDA events on GPU, perf_counter on CPU — placed around the data fetch and the backward/update by
this script, and inside the step by forward hooks on the models (the step is one method call):
  data               next batch (ours: on-device gather+crop+flip; reference: PIL loop + copy)
  pgd                from the start of the step to the first train-mode student forward
  student fwd        S(x'), S(x) in train mode
  teacher fwd        N(x), N(x'), R(x') (and the reference's R(x))
  losses             everything between the forwards' ends and the backward (losses, τ/w/λ updates)
  backward+optimizer backward, student SGD, ITT update of R

    python benchmarks/bench_train.py                      # tiny CPU models, < 1 minute on 2 cores
    python benchmarks/bench_train.py --full --batch 512 --json benchmarks/results/train_h100_b512.json
"""
import argparse
import contextlib
import copy
import statistics
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import common

# docs/performance.md, "Counting the work": forward GFLOP per 32×32 image.
PAPER_GFLOP = {"resnet18": 1.11, "mobilenet_v2": 0.18, "wrn34_10": 13.3, "resnet56": 0.25}
# Per image, in units of each model's forward cost (docs/performance.md §1; docs/method.md §8).
STUDENT_FORWARDS = 26
CLEAN_FORWARDS = 2
ROBUST_FORWARDS = {"itt": 3, "pre-itt": 1}
ITT_EPOCH, PRE_ITT_EPOCH, EPOCHS = 51, 1, 300  # E_itt = 50 of 300
EPS, ALPHA, PGD_STEPS = 8 / 255, 2 / 255, 10


# ---- models and FLOPs ----------------------------------------------------------------------------
def parse_model(spec):
    """'name' or 'name:key=value,...' (e.g. 'small_cnn:width=8') -> (name, kwargs with int values)."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, kwargs


def build_model(spec, num_classes):
    from ciard_fast.models import create_model

    name, kwargs = parse_model(spec)
    return create_model(name, num_classes=num_classes, **kwargs)


def forward_gflop(spec, model, image_size):
    """(GFLOP of one forward of one image, where the number comes from)."""
    name, kwargs = parse_model(spec)
    if name in PAPER_GFLOP and not kwargs and image_size == 32:
        return PAPER_GFLOP[name], "docs/performance.md"
    training = model.training
    model.eval()
    x = torch.rand(1, 3, image_size, image_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(training)
    return counter.get_total_flops() / 1e9, "FlopCounterMode"


def peak(args, device):
    """(peak TFLOP/s used for MFU, its source, the matmul throughput measured here)."""
    measured = common.matmul_tflops(device)
    kind = "bf16" if device.type == "cuda" else "fp32"
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops", measured
    spec = common.spec_peak_tflops(common.device_info(device)["device"]) if device.type == "cuda" else None
    if spec:
        return spec, "data sheet, dense bf16", measured
    return measured, f"measured {kind} matmul", measured


# ---- the two contenders --------------------------------------------------------------------------
class Contender:
    """One side of the comparison: how to get a batch, the forward half and the update half."""

    def __init__(self, name, dtype, next_batch, forward, update, student, teachers, note, context=None):
        self.name, self.dtype, self.note = name, dtype, note
        self.next_batch, self.forward, self.update = next_batch, forward, update
        self.student, self.teachers = student, teachers
        self.context = context or contextlib.nullcontext

    def step(self, clock=None):
        mark = clock.mark if clock is not None else (lambda label: None)
        mark("data")
        x, y = self.next_batch()
        mark("pgd")
        out = self.forward(x, y)
        mark("backward+optimizer")
        self.update(out)
        mark(None)


def endless(loader):
    while True:
        yield from loader


def make_ours(args, device, models, images, labels):
    """Our CIARD step, put together as ciard_fast.engine does for a user (engine/api.py, builders.py,
    trainer.py): default TrainConfig options — on CUDA bf16 autocast, channels_last, fused SGD and
    the CUDA-graphed PGD loop; on CPU fp32 and plain SGD — and the body of Trainer's step loop."""
    from ciard_fast.config import TrainConfig
    from ciard_fast.data import DeviceLoader
    from ciard_fast.engine.optim import RunOptimizers
    from ciard_fast.engine.precision import autocast, resolve_precision, use_channels_last
    from ciard_fast.attacks.graphs import GraphCache
    from ciard_fast.engine.trainer import step_forward, step_update
    from ciard_fast.methods import AttackSettings, get_method

    config = TrainConfig()
    precision = resolve_precision(config.precision, device)
    channels_last = use_channels_last(config.channels_last, device)
    graphs = GraphCache() if (config.cuda_graphs if config.cuda_graphs is not None else device.type == "cuda") else None
    student, robust, clean = (m.to(device) for m in models)
    if channels_last:
        student, robust, clean = (m.to(memory_format=torch.channels_last) for m in (student, robust, clean))
    cls = get_method("ciard")
    method = cls(student, num_classes=args.num_classes, epochs=EPOCHS, base_lr=config.lr, options=cls.Options(),
                 attack=AttackSettings(EPS, ALPHA, PGD_STEPS), device=device, robust_teacher=robust,
                 clean_teacher=clean)
    epoch = ITT_EPOCH if args.stage == "itt" else PRE_ITT_EPOCH
    # every optimiser of the run (the student's and ITT's on R), as the engine builds and schedules them
    optimizer = RunOptimizers(method, config.momentum, config.weight_decay, device, config.optimizer)
    optimizer.set_epoch(epoch)
    method.start_epoch(epoch)
    student.train()
    loader = DeviceLoader(images, labels, batch_size=args.batch, device=device, shuffle=True, augment=True,
                          drop_last=True, seed=config.seed, channels_last=channels_last)
    batches = endless(loader)
    sums = {}

    def forward(x, y):  # exactly the engine's step (ciard_fast/engine/trainer.py)
        return step_forward(method, optimizer, x, y, lambda: autocast(precision, device), graphs)

    def update(out):
        step_update(method, optimizer, out, sums)

    dtype = "bf16" if precision == "bf16" else "fp32"
    fused = any(group.get("fused") for group in optimizer["student"].param_groups)
    note = ", ".join(filter(None, ["bf16 autocast" if dtype == "bf16" else "fp32",
                                   "channels_last" if channels_last else "", "fused SGD" if fused else "",
                                   "graphed PGD" if graphs is not None else "", "DeviceLoader"]))
    return Contender("ours", dtype, lambda: next(batches), forward, update, student, (robust, clean), note), method


def make_reference(args, device, models, images, labels, method):
    """The reference step over copies of the same initial models, fp32 NCHW."""
    from reference import ReferenceCIARD, ReferenceLoader, to_device

    student, robust, clean = (m.to(device) for m in models)
    step = ReferenceCIARD(student, robust, clean, lr=method.student_lr(method.epoch),
                          teacher_lr=method.teacher_lr(method.epoch) if method.options.itt else 0.0,
                          eps=EPS, alpha=ALPHA, steps=PGD_STEPS, kd_scale=method.kd_scale,
                          itt_active=method.itt_active)
    student.train()
    loader = ReferenceLoader(images.numpy(), labels.numpy(), batch_size=args.batch)
    batches = endless(loader)

    @contextlib.contextmanager
    def cudnn_as_public_code():
        saved = torch.backends.cudnn.deterministic
        torch.backends.cudnn.deterministic = args.ref_deterministic
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic = saved

    note = "fp32 eager, PIL loader" + (", cudnn.deterministic" if args.ref_deterministic and device.type == "cuda" else "")
    return Contender("reference", "fp32", lambda: to_device(*next(batches), device), step.forward_losses,
                     step.update, student, (robust, clean), note, cudnn_as_public_code)


# ---- measuring -------------------------------------------------------------------------------------
def phase_hooks(clock, student, teachers):
    """Forward hooks that mark phase changes inside the step (see the module docstring)."""
    def student_pre(module, inputs):
        clock.mark("student fwd" if module.training else "pgd")

    def student_post(module, inputs, output):
        if module.training:
            clock.mark("losses")

    handles = [student.register_forward_pre_hook(student_pre), student.register_forward_hook(student_post)]
    for teacher in teachers:
        handles.append(teacher.register_forward_pre_hook(lambda m, i: clock.mark("teacher fwd")))
        handles.append(teacher.register_forward_hook(lambda m, i, o: clock.mark("losses")))
    return handles


def phase_breakdown(contender, device, steps):
    """Mean seconds per step of each phase over `steps` marked steps."""
    clock = common.PhaseClock(device)
    handles = phase_hooks(clock, contender.student, contender.teachers)
    try:
        for _ in range(steps):
            contender.step(clock)
    finally:
        for handle in handles:
            handle.remove()
    return {label: seconds / steps for label, seconds in clock.totals().items()}


def step_seconds(contenders, args, device):
    """Median seconds per step of each contender.

    CUDA: common.measure per contender (events, no host sync between steps, as in a training loop).
    CPU: after each side's warm-up, single steps alternate between the sides, so that a change in
    the load of a shared machine hits both medians alike.
    """
    if device.type == "cuda":
        seconds = {}
        for c in contenders:
            with c.context():
                seconds[c.name] = common.measure(c.step, device, repeats=args.repeats, warmup=args.warmup)
        return seconds
    times = {c.name: [] for c in contenders}
    for c in contenders:
        with c.context():
            for _ in range(args.warmup):
                c.step()
    for _ in range(args.repeats):
        for c in contenders:
            with c.context():
                times[c.name].append(common.measure(c.step, device, repeats=1, warmup=0))
    return {name: statistics.median(values) for name, values in times.items()}


def describe(contender, seconds, args, device, step_gflop, peak_tflops):
    """The contender's row, after its host-sync count and phase-breakdown runs."""
    with contender.context():
        syncs = common.count_cuda_syncs(contender.step, device)
        phases = phase_breakdown(contender, device, args.profile_steps) if args.profile_steps else {}
    tflops = step_gflop * args.batch / seconds / 1e3
    row = {"table": "step", "impl": contender.name, "dtype": contender.dtype, "batch": args.batch,
           "student": args.student, "robust_teacher": args.robust_teacher, "clean_teacher": args.clean_teacher,
           "stage": args.stage, "ms": seconds * 1e3, "images_per_s": args.batch / seconds,
           "gflop_per_image": step_gflop, "tflops": tflops, "mfu_pct": 100 * tflops / peak_tflops,
           "host_syncs": syncs, "note": contender.note}
    return row, phases


def phase_rows(phases_by_impl, step_rows):
    """One JSON row per (impl, phase): mean ms per step and share of the marked step."""
    rows = []
    for step_row in step_rows:
        phases = phases_by_impl[step_row["impl"]]
        total = sum(phases.values()) or 1.0
        for label, seconds in phases.items():
            rows.append({"table": "phases", "impl": step_row["impl"], "dtype": step_row["dtype"],
                         "batch": step_row["batch"], "stage": step_row["stage"], "phase": label,
                         "ms": seconds * 1e3, "pct": 100 * seconds / total})
    return rows


def print_phases(rows, impls):
    order = ["data", "pgd", "student fwd", "teacher fwd", "losses", "backward+optimizer"]
    labels = order + sorted({r["phase"] for r in rows} - set(order))
    table = []
    for label in labels:
        line = {"phase": label}
        for r in rows:
            if r["phase"] == label:
                line[f"{r['impl']}_ms"], line[f"{r['impl']}_pct"] = r["ms"], r["pct"]
        if len(line) > 1:
            table.append(line)
    columns = [("phase", "phase", None)]
    for impl in impls:
        columns += [(f"{impl}_ms", f"{impl} ms", "{:.2f}"), (f"{impl}_pct", "%", "{:.0f}%")]
    common.print_table("Where the time goes (mean per step; markers at phase changes, separate run)", table, columns)


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, default_repeats=5)
    parser.add_argument("--student", default=None,
                        help="student model, 'name' or 'name:key=value' (default small_cnn:width=8; resnet18 with "
                             "--full; mobilenet_v2 is the other paper student)")
    parser.add_argument("--robust-teacher", default=None, help="default small_cnn:width=16; wrn34_10 with --full")
    parser.add_argument("--clean-teacher", default=None, help="default small_resnet:width=8; resnet56 with --full")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 128 with --full")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--stage", choices=sorted(ROBUST_FORWARDS), default="itt",
                        help="itt (default: epochs 51-300, R trained) or pre-itt (epochs 1-50, R frozen)")
    parser.add_argument("--dataset-size", type=int, default=None, help="synthetic images (default 8 × batch)")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps of the phase-breakdown run (0: skip)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak for MFU (default: 989 on H100/H200 SXM, else a matmul measured here)")
    parser.add_argument("--no-ref-deterministic", dest="ref_deterministic", action="store_false",
                        help="run the reference without cudnn.deterministic (the public script sets it)")
    args = parser.parse_args(argv)
    args.student = args.student or ("resnet18" if args.full else "small_cnn:width=8")
    args.robust_teacher = args.robust_teacher or ("wrn34_10" if args.full else "small_cnn:width=16")
    args.clean_teacher = args.clean_teacher or ("resnet56" if args.full else "small_resnet:width=8")
    args.batch = args.batch or (128 if args.full else 32)
    args.dataset_size = args.dataset_size or 8 * args.batch
    if args.full:
        args.repeats, args.warmup = max(args.repeats, 10), max(args.warmup, 3)
    if args.threads is None and args.device == "cpu":
        args.threads = 1  # two threads on two shared cores are slower and far noisier than one
    return args


def main(argv=None):
    args = parse_args(argv)
    common.apply_threads(args)
    device = torch.device(args.device)
    info = common.device_info(device)
    print(f"device: {info['device']} | torch {info['torch']} | triton {info['triton']} | batch {args.batch} | "
          f"S={args.student} R={args.robust_teacher} N={args.clean_teacher} | {args.stage} | "
          f"threads {torch.get_num_threads()}")

    torch.manual_seed(0)
    specs = (args.student, args.robust_teacher, args.clean_teacher)
    models = [build_model(spec, args.num_classes) for spec in specs]
    reference_models = [copy.deepcopy(m) for m in models]  # identical initial weights for both sides
    gflop = {spec: forward_gflop(spec, m, args.image_size) for spec, m in zip(specs, models)}
    step_gflop = (STUDENT_FORWARDS * gflop[args.student][0] + ROBUST_FORWARDS[args.stage] * gflop[args.robust_teacher][0]
                  + CLEAN_FORWARDS * gflop[args.clean_teacher][0])
    peak_tflops, peak_source, measured_tflops = peak(args, device)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.dataset_size, args.image_size, args.image_size, 3), dtype=torch.uint8,
                           generator=g)
    labels = torch.randint(0, args.num_classes, (args.dataset_size,), generator=g)

    ours, method = make_ours(args, device, models, images, labels)
    reference = make_reference(args, device, reference_models, images, labels, method)
    seconds = step_seconds((ours, reference), args, device)
    rows, phases = [], {}
    for contender in (ours, reference):
        row, phases[contender.name] = describe(contender, seconds[contender.name], args, device, step_gflop,
                                               peak_tflops)
        rows.append(row)
    ref_ms = rows[1]["ms"]
    for row in rows:
        row.update(speedup_vs_reference=ref_ms / row["ms"], peak_tflops=peak_tflops, peak_source=peak_source,
                   measured_matmul_tflops=measured_tflops)

    common.print_table(
        f"CIARD step ({args.stage}), S={args.student} R={args.robust_teacher} N={args.clean_teacher}, "
        f"batch {args.batch} (median of {args.repeats})", rows,
        [("impl", "impl", None), ("dtype", "dtype", None), ("ms", "ms/step", "{:.1f}"),
         ("images_per_s", "images/s", "{:.0f}"), ("speedup_vs_reference", "vs ref", "{:.2f}x"),
         ("tflops", "TFLOP/s", "{:.3g}"), ("mfu_pct", "MFU", "{:.2f}%"), ("host_syncs", "syncs", None),
         ("note", "note", None)])
    sources = sorted({src for _, src in gflop.values()})
    print(f"FLOPs: {step_gflop:.4g} GFLOP/image = {STUDENT_FORWARDS}×{gflop[args.student][0]:.4g} (S) + "
          f"{ROBUST_FORWARDS[args.stage]}×{gflop[args.robust_teacher][0]:.4g} (R) + "
          f"{CLEAN_FORWARDS}×{gflop[args.clean_teacher][0]:.4g} (N); forward costs from {', '.join(sources)}")
    print(f"peak: {peak_tflops:.4g} TFLOP/s ({peak_source}); measured matmul here: {measured_tflops:.4g} TFLOP/s")
    prows = phase_rows(phases, rows)
    if prows:
        print_phases(prows, [r["impl"] for r in rows])
    if device.type == "cpu":
        print("note: CPU timings on a shared machine are noisy; compare ratios from one run, not across runs")
    if args.json:
        config = {**vars(args), "gflop_per_forward": {k: v[0] for k, v in gflop.items()},
                  "gflop_source": {k: v[1] for k, v in gflop.items()}}
        common.write_json(args.json, "bench_train", rows + prows, device, config)


if __name__ == "__main__":
    sys.exit(main())
