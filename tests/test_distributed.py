"""Data-parallel training on CPU with gloo: 2 processes must agree with each other after every
step, agree with one process on the same global batch (so the push mask, λ, τ and w use global
statistics), and a 2-rank checkpoint must resume in 1 process."""
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _tiny import tiny_convnet_nobn

pytestmark = pytest.mark.slow

STATE_KEYS = ("tau_adv", "tau_nat", "weights", "initial_losses", "push_lambda")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_method(distributed_ctx=None):
    from ciard_fast.engine.api import _distribute_method
    from ciard_fast.methods import AttackSettings, get_method

    student, robust, clean = tiny_convnet_nobn(seed=0), tiny_convnet_nobn(seed=1), tiny_convnet_nobn(seed=2)
    if distributed_ctx is not None:
        student = distributed_ctx.wrap(student, torch.device("cpu"))
    cls = get_method("ciard")
    method = cls(student, num_classes=10, epochs=6, robust_teacher=robust, clean_teacher=clean,
                 options=cls.Options(E_itt=1), attack=AttackSettings(8 / 255, 2 / 255, 2, random_start="none"))
    if distributed_ctx is not None:
        config = type("C", (), {"sync_batchnorm": False})()
        _distribute_method(method, distributed_ctx, torch.device("cpu"), config)
    return method


def global_batches(steps=3, B=16):
    g = torch.Generator().manual_seed(123)
    return [(torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, 10, (B,), generator=g)) for _ in range(steps)]


def run_steps(method, batches, rank=0, world_size=1, on_step=None):
    from ciard_fast.engine.distributed import unwrap

    student = unwrap(method.student)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    method.start_epoch(2)  # ITT active: the robust teacher trains through DDP too
    for i, (x, y) in enumerate(batches):
        # the loader's sharding: rank r serves every world_size-th sample of the global batch
        out = method.training_step(x[rank::world_size], y[rank::world_size])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.after_optimizer_step()
        if on_step is not None:
            on_step(i, method)
    return method


def snapshot(method):
    from ciard_fast.engine.distributed import unwrap

    flat = [p.detach().reshape(-1) for p in unwrap(method.student).parameters()]
    flat += [p.detach().reshape(-1) for p in unwrap(method.robust_teacher).parameters()]
    flat += [getattr(method, k).detach().reshape(-1).float() for k in STATE_KEYS]
    return torch.cat(flat)


def _worker_steps(rank, world_size, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from ciard_fast.engine import distributed

    distributed.reset_context()
    ctx = distributed.get_context("cpu")
    method = make_method(ctx)
    mismatches = []

    def compare_ranks(step, m):
        mine = snapshot(m)
        gathered = [torch.zeros_like(mine) for _ in range(world_size)]
        dist.all_gather(gathered, mine)
        if not all(torch.equal(gathered[0], other) for other in gathered[1:]):
            mismatches.append(step)

    run_steps(method, global_batches(), rank, world_size, on_step=compare_ranks)
    if rank == 0:
        torch.save({"snapshot": snapshot(method), "mismatches": mismatches}, result_path)
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    result_path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker_steps, args=(2, free_port(), result_path), nprocs=2, join=True)
    result = torch.load(result_path)
    assert result["mismatches"] == [], f"ranks diverged after steps {result['mismatches']}"
    single = snapshot(run_steps(make_method(), global_batches()))
    assert torch.allclose(result["snapshot"], single, rtol=1e-4, atol=1e-6), (
        (result["snapshot"] - single).abs().max())


def _worker_train(rank, world_size, port, overrides):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    import ciard_fast
    from ciard_fast.engine import distributed

    distributed.reset_context()
    ciard_fast.train(**overrides)
    dist.destroy_process_group()
    distributed.reset_context()


def test_train_on_two_ranks_then_resume_on_one(tmp_path):
    import ciard_fast
    from ciard_fast.engine.checkpoint import load_checkpoint

    overrides = dict(
        dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 32, "image_size": 16}, val_size=32,
        student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
        robust_teacher_args={"width": 4}, clean_teacher_model="small_cnn", clean_teacher_args={"width": 4},
        teacher_epochs=1, epochs=2, stop_after=1, batch_size=32, attack_steps=1, eval_pgd_steps=1,
        test_attacks=("clean",), test_n=16, progress=False, plot=False, device="cpu",
        out_dir=str(tmp_path / "run"), E_itt=0,
    )
    mp.spawn(_worker_train, args=(2, free_port(), overrides), nprocs=2, join=True)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    # 64 training images (96 − 32 held out), global batch 32 split over 2 ranks: 2 steps
    assert state["epoch"] == 1 and state["step"] == 64 // 32
    assert "robust_teacher" in state["method"]
    result = ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))  # one process
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert "clean" in result.metrics


def _worker_signalled(rank, world_size, port, overrides, signal_rank, out_dir):
    """Train; on rank `signal_rank` only, a real SIGTERM after its 3rd step (None: no signal)."""
    import json
    import signal

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    import ciard_fast
    from ciard_fast.engine import distributed, trainer
    from ciard_fast.engine.signals import RunInterrupted

    if rank == signal_rank:
        real, count = trainer.step_update, [0]

        def update(*args):
            real(*args)
            count[0] += 1
            if count[0] == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        trainer.step_update = update
    distributed.reset_context()
    outcome = {"rank": rank}
    try:
        ciard_fast.train(**overrides)
    except RunInterrupted as stop:
        outcome.update(stopped_at=stop.step, signum=stop.signum)
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(outcome, f)
    dist.destroy_process_group()
    distributed.reset_context()


def spawn_within(seconds, fn, args, nprocs=2):
    """mp.spawn that fails (and ends its processes) instead of hanging when ranks deadlock."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.time() + seconds
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {seconds} s (a collective some rank never joined?)")


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step_and_the_resume_is_exact(tmp_path):
    """SLURM or torchrun may signal the ranks of a job a step apart: the ranks agree on the flag
    every log_every steps, stop at the same step (none waits in a collective the others skip), rank
    0 writes the mid-epoch checkpoint, and a resume on two ranks ends where an uninterrupted run
    does."""
    import json

    from ciard_fast.engine.checkpoint import load_checkpoint

    # 160 training images, global batch 32 over 2 ranks: 5 steps an epoch; ranks agree every 2
    base = dict(method="natural", dataset="synthetic", dataset_args={"num_samples": 192, "num_test": 32,
                                                                     "image_size": 16},
                val_size=32, student="small_cnn", student_args={"width": 4}, epochs=2, batch_size=32, log_every=2,
                eval_pgd_steps=1, test_attacks=("clean",), test_n=16, progress=False, plot=False, device="cpu",
                compare_natural_student=False)
    full = dict(base, out_dir=str(tmp_path / "full"))
    spawn_within(300, _worker_signalled, (2, free_port(), full, None, str(tmp_path)))
    cut = dict(base, out_dir=str(tmp_path / "cut"))
    spawn_within(300, _worker_signalled, (2, free_port(), cut, 1, str(tmp_path)))
    outcomes = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [o.get("stopped_at") for o in outcomes] == [4, 4]  # rank 1's signal after step 3, agreed at 4
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["epoch"] == 0 and state["mid_epoch"]["steps"] == 4
    resumed = dict(base, resume=str(tmp_path / "cut" / "last.pt"))
    spawn_within(300, _worker_signalled, (2, free_port(), resumed, None, str(tmp_path)))
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("full", "cut"))
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
