"""The CIARD paper's nine-column table: the Square column, the transfer (black-box) columns, the
"ciard-paper" protocol of `evaluate`, `ciard-fast eval --protocol ciard-paper --surrogate`, and
transfer columns in a training run (crafted on the robust teacher as loaded before distillation).

The Square column runs pyautoattack's SquareAttack; it is compared with an independent
transcription of the algorithm of Andriushchenko et al. (2020) written below from the paper
(and, where it is installed, with torchattacks' Square, which the CIARD authors' script calls).
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ciard_fast
from ciard_fast.attacks import EvalReport, EvaluationWarning, evaluate, pgd, square
from ciard_fast.attacks.columns import AttackContext, get_attack
from ciard_fast.attacks.evaluate import default_hyperparameters
from ciard_fast.attacks.protocols import PROTOCOLS
from ciard_fast.cli import main

from test_evaluate import K, _synthetic  # the same 4-class data as the standard table's tests

NINE = ["clean", "fgsm", "pgd_sat", "pgd_trades", "cw", "transfer_pgd", "square", "transfer_cw", "aa"]
NINE_LABELS = "| Clean | FGSM | PGD-SAT | PGD-TRADES | CW∞ | BB PGD-TRADES | Square | BB CW∞ | AA | Worst |"
EPS = 2 / 255  # where the columns differ on the synthetic data (at 8/255 everything is 0%)


def _train(model, x, y, steps, lr, seed=0, batch=64):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


def _net(seed, width=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * 256, 32), nn.ReLU(), nn.Linear(32, K))


@pytest.fixture(scope="module")
def synth():
    """Two models trained on the same task (different seeds and widths) and held-out data."""
    x, y = _synthetic(1024)
    model = _train(_net(0), x[:768], y[:768], steps=100, lr=1e-2)
    other = _train(_net(1, width=6), x[:768], y[:768], steps=100, lr=1e-2, seed=1)
    return model, other, x[768:], y[768:]


# ---------------------------------------------------------------------------------------------
# transfer columns
# ---------------------------------------------------------------------------------------------
def _run_column(name, model, x, y, surrogate, seed=0):
    entry = get_attack(name)
    params = entry.defaults(EPS, seed)
    generator = torch.Generator().manual_seed(seed + 1000 * entry.seed_index)
    ctx = AttackContext(generator=generator, robust=torch.ones(x.shape[0], dtype=torch.bool), batch_size=x.shape[0],
                        surrogate=surrogate)
    return entry.run(model, x, y, params, ctx)


def test_transfer_with_the_model_as_surrogate_is_its_white_box_twin(synth):
    model, _, x, y = synth
    for transfer, white_box in (("transfer_pgd", "pgd_trades"), ("transfer_cw", "cw")):
        x_transfer = _run_column(transfer, model, x, y, surrogate=model)
        x_white = _run_column(white_box, model, x, y, surrogate=None)
        assert torch.equal(x_transfer, x_white), transfer  # the same images, example by example
        assert (x_white - x).abs().amax() > 0  # the attack moved them
    # through evaluate: the same accuracies, and adding the twins changes no example of Worst
    white = evaluate(model, (x, y), attacks=("clean", "pgd_trades", "cw"), eps=EPS, progress=False)
    both = evaluate(model, (x, y), attacks=("clean", "pgd_trades", "cw", "transfer_pgd", "transfer_cw"), eps=EPS,
                    progress=False, surrogate=model)
    assert both.correct["transfer_pgd"] == both.correct["pgd_trades"] == white.correct["pgd_trades"]
    assert both.correct["transfer_cw"] == both.correct["cw"] == white.correct["cw"]
    assert both.correct["worst"] == white.correct["worst"]
    assert 0 < white.correct["pgd_trades"] < white.correct["clean"]  # a comparison that can fail


def test_transfer_columns_craft_on_the_surrogate_and_score_on_the_model(synth):
    model, other, x, y = synth
    report = evaluate(model, (x, y), attacks=("clean", "transfer_pgd", "transfer_cw"), eps=EPS, progress=False,
                      surrogate=other, surrogate_name="other net", seed=3)
    n = x.shape[0]
    # the images are PGD-TRADES / CW∞ on the surrogate, with PGD-TRADES' random-start stream
    g = torch.Generator().manual_seed(3 + 1000 * get_attack("pgd_trades").seed_index)
    x_pgd = pgd(other, x, y, eps=EPS, alpha=0.003, steps=20, random_start="uniform", generator=g)
    x_cw = ciard_fast.cw_inf(other, x, y, eps=EPS, alpha=2 / 255, steps=30, kappa=50.0)
    with torch.no_grad():
        ok_clean, ok_pgd, ok_cw = ((model(v).argmax(1) == y) for v in (x, x_pgd, x_cw))
    assert report.correct["transfer_pgd"] == int(ok_pgd.sum()) and report.correct["transfer_cw"] == int(ok_cw.sum())
    assert report.correct["worst"] == int((ok_clean & ok_pgd & ok_cw).sum())  # folded into Worst per example
    # forwards: the evaluated model only scores (1 per example); the surrogate does the 20 / 30 steps
    assert report.forwards["transfer_pgd"] == n and report.forwards["transfer_cw"] == n
    assert report.surrogate_forwards == {"transfer_pgd": 20 * n, "transfer_cw": 30 * n}
    assert report.hyperparameters["transfer_pgd"]["surrogate"] == "other net" and report.surrogate == "other net"
    assert "(+20.0 surrogate)" in report.to_markdown() and "surrogate other net" in report.to_markdown()
    # and the transferred attack is weaker than the white-box one on this model
    white = evaluate(model, (x, y), attacks=("pgd_trades",), eps=EPS, progress=False, seed=3)
    assert white.correct["pgd_trades"] < report.correct["transfer_pgd"]
    round_trip = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert round_trip.surrogate_forwards == report.surrogate_forwards and round_trip.surrogate == "other net"


def test_a_transfer_column_without_a_surrogate_is_a_value_error_naming_it(synth):
    model, other, x, y = synth
    for kwargs in (dict(attacks=("clean", "transfer_pgd")), dict(attacks=("transfer_cw",)),
                   dict(protocol="ciard-paper")):
        with pytest.raises(ValueError, match="transfer_.*pass surrogate="):
            evaluate(model, (x, y), progress=False, **kwargs)
    with pytest.raises(TypeError, match="surrogate must be a callable"):
        evaluate(model, (x, y), attacks=("transfer_pgd",), surrogate="teacher.pt", progress=False)
    wrong = _train(nn.Sequential(nn.Flatten(), nn.Linear(3 * 256, K + 1)), x, y % (K + 1), steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="surrogate returns 5 logits but the evaluated model 4"):
        evaluate(model, (x, y), attacks=("transfer_pgd",), surrogate=wrong, progress=False)
    with pytest.warns(EvaluationWarning, match="surrogate is in train mode"):
        evaluate(model, (x[:8], y[:8]), attacks=("transfer_pgd",), surrogate=other.train(), progress=False)
    other.eval()


def test_ciard_paper_protocol_gives_the_nine_columns_in_order(synth):
    model, other, x, y = synth
    # (AutoAttack narrowed to APGD-CE for speed: attack_params apply on top of a protocol, and say so)
    report = evaluate(model, (x[:16], y[:16]), protocol="ciard-paper", surrogate=other, eps=EPS, progress=False,
                      attack_params={"aa": {"attacks_to_run": ["apgd-ce"]}})
    assert report.columns == NINE + ["worst"] and report.protocol == "ciard-paper"
    assert NINE_LABELS in report.to_markdown()
    hyper = report.hyperparameters
    assert hyper["square"]["n_queries"] == 100 and hyper["square"]["p_init"] == 0.8  # the public script's Square
    assert any("attack_params changed ['aa']" in note for note in report.notes)
    protocol = PROTOCOLS["ciard-paper"]  # unchanged, AutoAttack is the standard version
    assert list(protocol.columns) == NINE and protocol.params == {"square": {"n_queries": 100}}
    assert default_hyperparameters()["aa"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert default_hyperparameters()["square"]["n_queries"] == 5000  # AutoAttack's, outside the protocol
    assert (hyper["transfer_pgd"]["steps"], hyper["transfer_pgd"]["alpha"]) == (20, 0.003)
    assert (hyper["transfer_cw"]["steps"], hyper["transfer_cw"]["kappa"]) == (30, 50.0)
    assert any("protocol ciard-paper" in note for note in report.notes)
    # Square's forwards: <= 1 + (100 + 2) per example, and the scoring forward
    assert report.forwards["square"] <= 16 * (1 + 102 + 1)
    # the standard protocol is the default; a protocol fixes its columns
    assert evaluate(model, (x[:8], y[:8]), progress=False, attack_params={"aa": {"attacks_to_run": ["apgd-ce"]}}) \
        .columns == ["clean", "fgsm", "pgd_sat", "pgd_trades", "cw", "aa", "worst"]
    with pytest.raises(ValueError, match="fixes the columns"):
        evaluate(model, (x, y), attacks=("clean",), protocol="ciard-paper", surrogate=other, progress=False)
    with pytest.raises(ValueError, match="protocol must be one of 'standard', 'ciard-paper'"):
        evaluate(model, (x, y), protocol="paper", progress=False)


# ---------------------------------------------------------------------------------------------
# Square
# ---------------------------------------------------------------------------------------------
def square_reference(model, x, y, eps, n_queries, p_init, generator):
    """The L∞ Square Attack as the paper describes it (Andriushchenko et al. 2020, Algorithm 1 and
    Sec. 3.1), written independently: start from vertical stripes x ± ε (one sign per column and
    channel); at each query draw, for every example, a window of side s = round(√(p·H·W)) at a
    uniformly random position and one sign per channel, set the window to x ± ε, and keep the new
    image when the margin Z_y − max_{j≠y} Z_j decreases; stop an example once it is misclassified.
    p starts at p_init and halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of
    10,000 (rescaled to n_queries)."""
    b, c, h, w = x.shape

    def margin(images):
        with torch.no_grad():
            z = model(images).double()
        return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).amax(1)

    def signs(shape):
        return torch.randint(0, 2, shape, generator=generator).to(x.dtype) * 2 - 1

    best = (x + eps * signs((b, c, 1, w))).clamp(0, 1)
    best_margin = margin(best)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    for i in range(n_queries):
        active = best_margin > 0
        if not active.any():
            break
        halvings = sum(int(i / n_queries * 10000) > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
        side = min(max(round(math.sqrt(p_init / 2 ** halvings * h * w)), 1), h)
        top = torch.randint(0, h - side + 1, (b, 1, 1), generator=generator)
        left = torch.randint(0, w - side + 1, (b, 1, 1), generator=generator)
        window = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)).unsqueeze(1)
        candidate = torch.where(window, (x + eps * signs((b, c, 1, 1))).clamp(0, 1), best)
        candidate_margin = margin(candidate)
        better = active & (candidate_margin < best_margin)
        best = torch.where(better.view(b, 1, 1, 1), candidate, best)
        best_margin = torch.where(better, candidate_margin, best_margin)
    return best


@pytest.fixture(scope="module")
def digits():
    """A small CNN trained briefly on the embedded digits (about 89 % test accuracy, not robust)."""
    train, test = (ciard_fast.load_dataset("digits", split=s) for s in ("train", "test"))
    x_train = train.images.permute(0, 3, 1, 2).float() / 255
    model = _train(ciard_fast.create_model("small_cnn", num_classes=10, width=8), x_train, train.labels, steps=600,
                   lr=3e-3)
    return model, test.images.permute(0, 3, 1, 2).float() / 255, test.labels


def _accuracy(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_square_with_100_queries_agrees_with_an_independent_implementation(digits):
    model, x, y = digits
    eps = 2 / 255  # a radius where 100 queries break about 40 % of the examples: agreement means something
    clean = _accuracy(model, x, y)
    ours = [_accuracy(model, square(model, x, y, eps=eps, n_queries=100, seed=s), y) for s in range(3)]
    reference = [_accuracy(model, square_reference(model, x, y, eps, 100, 0.8, torch.Generator().manual_seed(s)), y)
                 for s in range(3)]
    mean_ours, mean_reference = sum(ours) / 3, sum(reference) / 3
    assert mean_ours < clean - 20 and mean_reference < clean - 20  # both attacks break many examples
    assert abs(mean_ours - mean_reference) <= 4.0, (ours, reference)  # within a few points (300 examples)


def test_square_matches_torchattacks_square_the_ciard_script_calls(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    theirs = torchattacks.Square(model, norm="Linf", eps=2 / 255, n_queries=100, seed=0)(x, y)
    ours = square(model, x, y, eps=2 / 255, n_queries=100, seed=0)
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(theirs).argmax(1))  # the same examples broken


def test_square_is_seeded_restores_the_rng_and_stays_in_the_ball(digits):
    model, x, y = digits
    x, y = x[:64], y[:64]
    state = torch.get_rng_state()
    a = square(model, x, y, eps=8 / 255, n_queries=50, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # SquareAttack reseeds the global RNG; restored
    assert torch.equal(a, square(model, x, y, eps=8 / 255, n_queries=50, seed=1))
    assert not torch.equal(a, square(model, x, y, eps=8 / 255, n_queries=50, seed=2))
    assert (a - x).abs().amax() <= 8 / 255 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert _accuracy(model, a, y) < _accuracy(model, x, y) - 50  # ε = 8/255 breaks this undefended model
    model.train()
    try:
        square(model, x, y, eps=8 / 255, n_queries=5, seed=1)
        assert model.training  # the mode is the caller's
    finally:
        model.eval()
    for kwargs, error, pattern in ((dict(n_queries=0), ValueError, "n_queries"), (dict(p_init=1.5), ValueError, "p_init"),
                                   (dict(eps=torch.tensor(0.1)), TypeError, "single float eps"),
                                   (dict(loss="dlr"), ValueError, "loss"), (dict(seed=1.0), TypeError, "seed")):
        with pytest.raises(error, match=pattern):
            square(model, x, y, **kwargs)


def test_square_column_without_pyautoattack_is_skipped_with_a_reason(synth, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyautoattack(name, *args, **kwargs):
        if name.startswith("pyautoattack"):
            raise ImportError("No module named 'pyautoattack'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyautoattack)
    model, _, x, y = synth
    with pytest.warns(EvaluationWarning, match="Square column skipped.*ciard-fast\\[autoattack\\]"):
        report = evaluate(model, (x[:8], y[:8]), attacks=("clean", "square"), progress=False)
    assert "square" in report.skipped and report.columns == ["clean", "worst"]
    with pytest.raises(ImportError, match="pip install"):
        evaluate(model, (x[:8], y[:8]), attacks=("clean", "square"), progress=False, strict=True)


# ---------------------------------------------------------------------------------------------
# ciard-fast eval --protocol ciard-paper --surrogate
# ---------------------------------------------------------------------------------------------
def test_eval_cli_ciard_paper_protocol_errors(digits, tmp_path, capsys):
    model, _, _ = digits
    weights = tmp_path / "student.pt"
    torch.save({"student": model.state_dict(), "config": {"student": "small_cnn", "student_args": {"width": 8},
                                                          "dataset": "digits", "student_normalize": False}}, weights)
    teacher = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), teacher)  # a plain state dict: its architecture must be named
    base = ["eval", "--protocol", "ciard-paper", "--weights", str(weights), "--n", "8", "--no-progress"]
    assert main(base) == 2
    assert "--protocol ciard-paper has transfer columns" in capsys.readouterr().err
    assert main(base + ["--surrogate", str(teacher)]) == 2
    assert "--surrogate_model required" in capsys.readouterr().err
    assert main(base + ["--surrogate", str(teacher), "--surrogate_model", "resnet20"]) == 2
    err = capsys.readouterr().err
    assert f"--surrogate '{teacher}' (built as resnet20; choose it with --surrogate_model)" in err and "does not fit" in err
    assert main(base + ["--surrogate", str(tmp_path / "missing.pt")]) == 2
    assert "no weights file" in capsys.readouterr().err
    assert main(base + ["--attacks", "clean", "--surrogate", str(weights)]) == 2
    assert "fixes the columns" in capsys.readouterr().err


def test_eval_cli_ciard_paper_protocol_with_a_trainer_checkpoint_surrogate(digits, tmp_path, capsys):
    model, _, _ = digits
    config = {"student": "small_cnn", "student_args": {"width": 8}, "dataset": "digits", "student_normalize": False}
    weights, teacher = tmp_path / "student.pt", tmp_path / "teacher.pt"
    torch.save({"student": model.state_dict(), "config": config}, weights)
    torch.save({"student": model.state_dict(), "config": config}, teacher)
    json_path = tmp_path / "eval.json"
    code = main(["eval", "--protocol", "ciard-paper", "--weights", str(weights), "--surrogate", str(teacher), "--n",
                 "8", "--no-progress", "--json", str(json_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert NINE_LABELS in out and "surrogate of the transfer columns: small_cnn, normalize=none" in out
    data = json.loads(json_path.read_text())
    assert list(data["accuracy"]) == NINE + ["worst"] and data["protocol"] == "ciard-paper"
    assert data["surrogate"] == f"small_cnn ({teacher})"
    # the student is its own surrogate here: each BB column equals its white-box twin
    assert data["correct"]["transfer_pgd"] == data["correct"]["pgd_trades"]
    assert data["correct"]["transfer_cw"] == data["correct"]["cw"]
    assert data["surrogate_forwards"] == {"transfer_pgd": 20 * 8, "transfer_cw": 30 * 8}


# ---------------------------------------------------------------------------------------------
# transfer columns in a training run: the robust teacher as loaded before distillation
# ---------------------------------------------------------------------------------------------
RUN = dict(dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 8}, val_size=16,
           student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
           robust_teacher_args={"width": 4}, robust_teacher_normalize=True, clean_teacher_model="small_cnn",
           clean_teacher_args={"width": 4}, teacher_epochs=1, epochs=2, batch_size=32, attack_steps=1,
           eval_pgd_steps=1, test_attacks=("clean", "pgd_trades", "cw", "transfer_pgd", "transfer_cw"), test_n=16,
           compare_natural_student=False, progress=False, plot=False, device="cpu",
           E_itt=0.0)  # CIARD's ITT fine-tunes the robust teacher from the first epoch


def test_a_runs_transfer_columns_are_crafted_on_the_teacher_as_loaded_before_itt(tmp_path, capsys):
    from ciard_fast.engine import checkpoint as ckpt
    from ciard_fast.engine.model_card import weights_digest
    from ciard_fast.engine.surrogate import load_surrogate

    out = tmp_path / "run"
    result = ciard_fast.train(out_dir=str(out), **RUN)
    record = json.loads((out / "surrogate.json").read_text())
    teacher_file = out / "teachers" / "robust" / "last.pt"
    assert record["weights"] == str(teacher_file) and record["model"] == "small_cnn"
    as_loaded = weights_digest(ckpt.load_checkpoint(str(teacher_file))["student"])
    after_itt = weights_digest(ckpt.load_checkpoint(str(out / "last.pt"))["method"]["robust_teacher"])
    assert record["weights_sha256"] == as_loaded != after_itt  # ITT changed the teacher; the surrogate is the file
    assert result.surrogate == record and json.loads((out / "results.json").read_text())["surrogate"] == record
    assert json.loads((out / "model_card.json").read_text())["evaluation"]["surrogate"] == record
    assert f"BB PGD-TRADES, BB CW∞: crafted on {teacher_file} (small_cnn)" in result.table
    # the same numbers as `ciard-fast eval` with the teacher file as surrogate
    capsys.readouterr()
    code = main(["eval", "--weights", str(out / "best.pt"), "--attacks", "clean,pgd_trades,cw,transfer_pgd,transfer_cw",
                 "--surrogate", str(teacher_file), "--n", "16", "--no-progress", "--device", "cpu",
                 "--json", str(tmp_path / "eval.json")])
    assert code == 0, capsys.readouterr().err
    measured = json.loads((tmp_path / "eval.json").read_text())["accuracy"]
    for column in RUN["test_attacks"]:
        assert 100 * measured[column] == pytest.approx(result.metrics[column], abs=1e-9), column
    # a teacher file that changed since the run started is refused, not used
    state = ckpt.load_checkpoint(str(teacher_file))
    state["student"] = {k: (v + 1 if v.is_floating_point() else v) for k, v in state["student"].items()}
    torch.save(state, teacher_file)
    with pytest.raises(ValueError, match="no longer holds the weights this run started with"):
        load_surrogate(result.config, 10, torch.device("cpu"), str(out))


def test_a_resumed_run_crafts_on_the_surrogate_recorded_at_its_start(tmp_path):
    out = tmp_path / "run"
    ciard_fast.train(out_dir=str(out), stop_after=1, **RUN)
    assert (out / "surrogate.json").is_file() and not (out / "results.json").exists()
    record = (out / "surrogate.json").read_text()
    (out / "surrogate.json").rename(out / "moved.json")
    with pytest.raises(ValueError, match="surrogate.json .* is missing"):
        ciard_fast.train(resume=str(out / "last.pt"))
    (out / "moved.json").rename(out / "surrogate.json")
    result = ciard_fast.train(resume=str(out / "last.pt"))
    assert set(result.metrics) >= {"transfer_pgd", "transfer_cw"} and result.surrogate == json.loads(record)


def test_transfer_columns_need_a_method_with_a_robust_teacher():
    with pytest.raises(ValueError, match="transfer column\\(s\\) transfer_cw are crafted on the run's robust teacher"):
        ciard_fast.TrainConfig(method="natural", test_attacks=("clean", "transfer_cw"))
    ciard_fast.TrainConfig(method="rslad", test_attacks=("clean", "transfer_cw"))  # RSLAD has one
