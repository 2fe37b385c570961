"""PeerAiD (`methods/peeraid.py`): the two objectives against their formulas written out, which
network each term trains (detached by default, the code's gradient path on request), the attack's
target, the two learning-rate schedules, the generated presets (SWA included), and whole runs
through `train()` and `compare()` with no teacher."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

import ciard_fast
from ciard_fast.config import TrainConfig, build_config
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.engine.swa import swa_start_epoch
from ciard_fast.methods import AttackSettings, get_method
from ciard_fast.methods.peeraid import PeerAiD

from _tiny import tiny_convnet
from method_contract import TINY, batch

# every weight away from 1 and 0, so that each one shows in the sum
OPTIONS = dict(temperature=3.0, peer_temperature=2.0, lambda_ce=0.3, lambda_peer=1.5, lambda_self=0.7,
               gamma_ce=0.9, gamma_kl=0.4)


def build(**options):
    return PeerAiD(tiny_convnet(seed=0), num_classes=10, epochs=4, peer=tiny_convnet(seed=1),
                   options=PeerAiD.Options(**{**OPTIONS, **options}), attack=AttackSettings(8 / 255, 2 / 255, 2))


def kl_mean(p_logits, q_logits, T):
    """mean over B×C of p·(log p − log q), p = softmax(p_logits/T), q = softmax(q_logits/T): torch's
    nn.KLDivLoss() default reduction, written out in float64."""
    p = torch.softmax(p_logits.double() / T, dim=1)
    q = torch.softmax(q_logits.double() / T, dim=1)
    return (p * (p.log() - q.log())).sum() / p.numel()


def ce(logits, y):
    return -torch.log_softmax(logits.double(), dim=1).gather(1, y[:, None]).mean()


def formula(S, P, x, x_adv, y, o):
    """(terms, L_P, L_S) of the docstring's formula on copies of the networks (train mode)."""
    S.train()
    P.train()
    p_adv, s_adv, s_nat = P(x_adv), S(x_adv), S(x)
    T, Tr = o["temperature"], o["peer_temperature"]
    terms = {"peer_ce": ce(p_adv, y), "peer_kl": kl_mean(s_adv, p_adv, Tr), "ce": ce(s_adv, y),
             "kd_peer": kl_mean(p_adv, s_adv, T), "kd_self": kl_mean(s_nat, s_adv, T)}
    L_P = o["gamma_ce"] * terms["peer_ce"] + o["gamma_kl"] * Tr ** 2 * terms["peer_kl"]
    L_S = o["lambda_ce"] * terms["ce"] + o["lambda_peer"] * T ** 2 * terms["kd_peer"] \
        + o["lambda_self"] * T ** 2 * terms["kd_self"]
    return terms, L_P, L_S


def fixed_attack(recorded):
    def attack(self, x, y, **kwargs):  # a fixed x' (no RNG), with what the step asked for recorded
        recorded.update(kwargs)
        recorded["x_adv"] = (x + 0.03 * torch.sign(torch.randn_like(x))).clamp(0, 1)
        return recorded["x_adv"]
    return attack


def test_the_loss_is_the_formula_written_out(monkeypatch):
    method = build()
    S0, P0 = copy.deepcopy(method.student), copy.deepcopy(method.peer)
    x, y = batch(3)
    recorded = {}
    monkeypatch.setattr(PeerAiD, "attack_student", fixed_attack(recorded))
    out = method.training_step(x, y)
    # the attack: RSLAD's KL attack on the student with the peer's clean logits (eval mode) as target
    assert recorded["loss"] == "kl"
    P_eval = copy.deepcopy(P0).eval()  # running statistics, not the batch's: P(x) was an eval-mode forward
    with torch.no_grad():
        assert torch.equal(recorded["target_logits"], P_eval(x))
    assert PeerAiD.attack_start == "normal_unclamped"
    with torch.no_grad():
        terms, L_P, L_S = formula(copy.deepcopy(S0), copy.deepcopy(P0), x, recorded["x_adv"], y, OPTIONS)
    for name, value in terms.items():
        assert out[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-8), name
    assert out["loss"].item() == pytest.approx((L_P + L_S).item(), rel=1e-5)
    # reduction: nn.KLDivLoss()'s elementwise mean is the per-sample KL divided by C
    p, q = torch.randn(4, 10), torch.randn(4, 10)
    per_sample = F.kl_div(F.log_softmax(q, 1), F.softmax(p, 1), reduction="batchmean")
    from ciard_fast.methods.peeraid import mean_kl

    assert mean_kl(p, q).item() == pytest.approx(per_sample.item() / 10, rel=1e-5)
    # BN: the peer's eval forward on x leaves its running statistics alone; the step leaves both in train mode
    assert method.peer.training and method.student.training


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _reference_grads(S0, P0, x, x_adv, y, trains_student):
    """Gradients of the written-out objectives: each network by its own objective, or (the code)
    the student by L_P + L_S."""
    S, P = copy.deepcopy(S0).double(), copy.deepcopy(P0).double()
    x, x_adv = x.double(), x_adv.double()
    S.train()
    P.train()
    o, T, Tr = OPTIONS, OPTIONS["temperature"], OPTIONS["peer_temperature"]
    p_adv, s_adv, s_nat = P(x_adv), S(x_adv), S(x)
    target = s_adv if trains_student else s_adv.detach()
    L_P = o["gamma_ce"] * ce(p_adv, y) + o["gamma_kl"] * Tr ** 2 * kl_mean(target, p_adv, Tr)
    L_S = o["lambda_ce"] * ce(s_adv, y) + o["lambda_peer"] * T ** 2 * kl_mean(p_adv.detach(), s_adv, T) \
        + o["lambda_self"] * T ** 2 * kl_mean(s_nat, s_adv, T)
    (L_P + L_S).backward()
    return _grads(S), _grads(P)


@pytest.mark.parametrize("trains_student", [False, True])
def test_each_network_learns_from_its_own_objective_unless_the_code_is_reproduced(monkeypatch, trains_student):
    method = build(peer_term_trains_student=trains_student)
    S0, P0 = copy.deepcopy(method.student), copy.deepcopy(method.peer)
    x, y = batch(4)
    recorded = {}
    monkeypatch.setattr(PeerAiD, "attack_student", fixed_attack(recorded))
    method.training_step(x, y)["loss"].backward()
    expected_s, expected_p = _reference_grads(S0, P0, x, recorded["x_adv"], y, trains_student)
    got_s, got_p = _grads(method.student), _grads(method.peer)
    assert got_s.keys() == expected_s.keys() and got_p.keys() == expected_p.keys()
    for got, expected in ((got_s, expected_s), (got_p, expected_p)):  # the peer's: L_P's alone in both modes
        # float32 against float64, relative to the network's gradient scale (a conv bias before BN
        # has a gradient of exactly 0: float32 leaves ~1e-8 there)
        scale = max(g.abs().max().item() for g in expected.values())
        for name in expected:
            torch.testing.assert_close(got[name].double(), expected[name], rtol=1e-4, atol=1e-5 * scale)
    # the two modes differ in the student's gradient only: the L_P path into S
    other_s, _ = _reference_grads(S0, P0, x, recorded["x_adv"], y, not trains_student)
    assert any(not torch.allclose(other_s[n], expected_s[n], rtol=1e-3, atol=1e-3 * expected_s[n].abs().max().item())
               for n in expected_s)


def test_the_student_runs_the_codes_three_forwards_in_both_modes(monkeypatch):
    """S(x') for the peer's target, S(x') for L_S, S(x): BN running statistics as in the code."""
    for trains_student in (False, True):
        method = build(peer_term_trains_student=trains_student)
        seen = []
        method.student.register_forward_hook(lambda m, args, out: seen.append((m.training, torch.is_grad_enabled())))
        monkeypatch.setattr(PeerAiD, "attack_student", fixed_attack({}))
        method.training_step(*batch(5))
        assert seen == [(True, trains_student), (True, True), (True, True)]


def test_the_peer_has_its_own_sgd_and_both_schedules_decay_at_the_codes_milestones():
    method = PeerAiD(tiny_convnet(seed=0), num_classes=10, epochs=300, base_lr=0.05, peer=tiny_convnet(seed=1),
                     options=PeerAiD.Options(peer_lr=0.2, peer_momentum=0.8, peer_weight_decay=1e-3))
    optimizers = RunOptimizers(method, momentum=0.9, weight_decay=2e-4, kind="sgd")
    assert optimizers.names() == ("student", "peer_optimizer")
    group = optimizers["peer_optimizer"].param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.8, 1e-3)
    peer_params = {id(p) for p in method.peer.parameters()}
    assert {id(p) for p in group["params"]} == peer_params
    # ×0.1 from epochs 215, 260, 285 (the code's 0-based 214, 259, 284)
    for epoch, factor in ((1, 1), (214, 1), (215, 0.1), (259, 0.1), (260, 0.01), (285, 0.001), (300, 0.001)):
        assert optimizers.set_epoch(epoch) == pytest.approx(0.05 * factor)
        assert optimizers["peer_optimizer"].param_groups[0]["lr"] == pytest.approx(0.2 * factor)
    # Tiny-ImageNet's schedule: ×0.1 from 100 and 150 of 200, scaled to a 20-epoch run
    tiny = PeerAiD(tiny_convnet(), num_classes=10, epochs=20, peer=tiny_convnet(),
                   options=PeerAiD.Options(lr_milestones=(100, 150), lr_schedule_epochs=200))
    assert [tiny.peer_lr(e) for e in (9, 10, 14, 15)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    with pytest.raises(ValueError, match="lr_milestones"):
        PeerAiD.Options(lr_milestones=(215, 400))


def test_generated_presets_carry_the_published_settings_and_swa():
    c10 = TrainConfig.from_preset("cifar10-resnet18-peeraid")
    assert (c10.epochs, c10.lr, c10.weight_decay, c10.batch_size) == (300, 0.1, 2e-4, 128)
    assert swa_start_epoch(c10.swa_start, c10.epochs) == 215  # from the first milestone, 1-based
    assert c10.method_args == dict(temperature=5.0, peer_temperature=1.0, gamma_ce=1.0, gamma_kl=0.1, lambda_ce=0.0,
                                   lambda_peer=1.0, lambda_self=1.0)
    assert c10.robust_teacher is None and "robust_teacher" not in ciard_fast.config.load_preset(
        "cifar10-resnet18-peeraid")  # no teacher: the teacher settings are left out
    c100 = TrainConfig.from_preset("cifar100-resnet18-peeraid")
    assert c100.method_args["gamma_kl"] == 1.0 and c100.method_args["temperature"] == 5.0
    tiny = TrainConfig.from_preset("tinyimagenet-resnet18-peeraid")
    assert tiny.epochs == 200 and swa_start_epoch(tiny.swa_start, tiny.epochs) == 100
    assert {k: tiny.method_args[k] for k in ("temperature", "gamma_kl", "lambda_ce", "lambda_peer", "lambda_self")} \
        == dict(temperature=1.0, gamma_kl=100.0, lambda_ce=0.035, lambda_peer=35.0, lambda_self=20.0)
    method = get_method("peeraid")(tiny_convnet(), num_classes=200, epochs=tiny.epochs, peer=tiny_convnet(),
                                   options=PeerAiD.Options(**tiny.method_args))
    assert [method.student_lr(e) for e in (99, 100, 150)] == pytest.approx([0.1, 0.01, 0.001])
    assert get_method("peeraid").needs_robust_teacher is False and get_method("peeraid").needs_clean_teacher is False


# ---- whole runs --------------------------------------------------------------------------------------
def test_peeraid_trains_through_train_without_a_teacher_and_with_swa(tmp_path):
    result = ciard_fast.train(build_config(overrides={**TINY, "method": "peeraid", "epochs": 3, "swa_start": 2,
                                                      "out_dir": str(tmp_path / "run")}))
    assert not (tmp_path / "run" / "teachers").exists() and result.teachers == {}
    state = ckpt.load_checkpoint(result.last_checkpoint)
    assert set(state["method"]) >= {"peer", "peer_optimizer"} and state["method"]["peer_optimizer"]["state"]
    row = result.history[-1]
    for key in ("train_peer_ce", "train_peer_kl", "train_ce", "train_kd_peer", "train_kd_self", "val_clean"):
        assert key in row and row[key] == row[key] and abs(row[key]) < float("inf"), key
    assert result.metrics and all(0.0 <= v <= 100.0 for v in result.metrics.values())
    assert result.evaluated_weights.startswith("SWA of the student: mean of the weights at the ends of epochs 2–")
    assert ckpt.eval_weights_source(state).startswith("SWA of the student: mean of the weights at the ends of "
                                                      "epochs 2–3 (2 snapshots)")


def test_compare_runs_peeraid_without_training_a_teacher(tmp_path):
    from ciard_fast.engine.compare import compare

    from test_compare import TINY as COMPARE_TINY

    out = tmp_path / "cmp"
    result = compare("peeraid", preset=None, out_dir=str(out), swa_start=1, gamma_kl=0.5, teacher_lr=0.05,
                     **COMPARE_TINY)
    assert not (out / "teachers").exists() and result.teachers == {}
    saved = json.loads((out / "peeraid" / "seed-0" / "results.json").read_text())
    assert saved["teachers"] == {} and saved["config"]["method_args"] == {"gamma_kl": 0.5}
    # no teacher, but a distillation method: the run's lr, not teacher_lr (the cross-entropy rows' lr)
    assert (saved["config"]["lr"], saved["config"]["teacher_lr"]) == (TrainConfig.lr, 0.05)
    row = result.rows["peeraid"]
    assert all(0.0 <= row[k] <= 100.0 for k in ("clean", "fgsm", "pgd_sat"))
    assert "peeraid reports SWA of the student: mean of the weights at the ends of epochs 1–1" in result.table


def test_a_peeraid_run_with_swa_cut_inside_an_epoch_resumes_bit_exactly(tmp_path, monkeypatch):
    import os
    import signal

    from ciard_fast.engine import trainer as trainer_module
    from ciard_fast.engine.signals import RunInterrupted

    from test_swa import _compare_runs

    def config(name):
        return build_config(overrides={**TINY, "method": "peeraid", "epochs": 4, "swa_start": 2,
                                       "out_dir": str(tmp_path / name)})

    full = ciard_fast.train(config("full"))
    real, count = trainer_module.step_update, {"n": 0}

    def update(*args):
        real(*args)
        count["n"] += 1
        if count["n"] == 8:  # epoch 3, after its second step: the average holds epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "step_update", update)
        with pytest.raises(RunInterrupted):
            ciard_fast.train(config("cut"))
    cut = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["mid_epoch"]["epoch"] == 3 and cut["callbacks"]["swa"]["count"] == 1
    resumed = ciard_fast.train(resume=str(tmp_path / "cut" / "last.pt"))
    state = _compare_runs(full.last_checkpoint, resumed.last_checkpoint)  # the peer and its SGD included
    assert state["callbacks"]["swa"]["count"] == 3 and full.metrics == resumed.metrics
