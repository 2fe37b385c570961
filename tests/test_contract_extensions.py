"""Extending the library through the method contract alone: every class here is defined and
registered in this file, and no library file knows it.

  * `ToyPeer`: a method with a third network — a peer built fresh and trained beside the student
    on the student's adversarial examples, with its own optimiser and schedule — and per-class
    temperatures as registered state (updated at each epoch's end).
  * `ToyAgreement`: a loss term shared by several methods, with its option declared once
    (`toy_gamma`); `ToyARD` is ARD with the term plugged in, ARD's file untouched.
  * `ToyAverage`: an engine callback (a running average of the student's weights, a toy SWA) that
    validation, best.pt, the final table, export and `ciard-fast eval` then use.

Both methods are in ``TEST_METHODS``, so the contract tests of method_contract.py run over them
too (with the callback active: its state must survive a mid-epoch resume as well).
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine import trainer as trainer_module
from ciard_fast.engine.callbacks import CALLBACKS, Callback, register_callback
from ciard_fast.engine.distributed import unwrap
from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.methods import (AttackSettings, LossSum, LossTerm, Method, MethodOptions, Network, OptimizerSpec,
                                get_method, option)
from ciard_fast.methods.ard import ARD

from _tiny import tiny_convnet
from method_contract import *  # noqa: F401,F403  (the contract tests, over TEST_METHODS)
from method_contract import TINY, batch


# ---- a method with a peer network ----------------------------------------------------------------
class ToyPeer(Method):
    """Student S and peer P, trained together (PeerAiD's shape, not its formula):

        x' = PGD-CE on S;   L_S = mean_{B×C} KL(softmax(P(x')/τ[y]) ‖ softmax(S(x')));   L_P = CE(P(x'), y)

    P trains on the student's x' with its own SGD (lr `peer_lr`, halved after the middle epoch).
    τ [C] (per class, start 1) moves after each epoch against the class's summed CE of S on x':
    τ ← clamp(τ − r·(L − mean L)/max|L − mean L|, 0.5, 5)."""

    name = "toy_peer"
    paper_epochs = 4
    attack_start = "uniform"
    networks = (Network.fresh("peer"),)   # the student's architecture, trainable

    @dataclasses.dataclass
    class Options(MethodOptions):
        peer_lr: float = option(0.05, "the peer's SGD learning rate", greater_than=0)
        rate: float = option(0.1, "per-class temperature step r", at_least=0, at_most=1)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        C = self.num_classes
        self.register_state("tau", torch.ones(C, device=self.device))
        self.register_state("class_loss", torch.zeros(C, device=self.device))

    def peer_lr(self, epoch):
        return self.options.peer_lr * (0.5 if epoch > self.epochs / 2 else 1.0)

    def configure_optimizers(self):
        return (OptimizerSpec("peer_optimizer", roles=("peer",), lr=self.peer_lr, momentum=0.9, weight_decay=5e-4),)

    def training_step(self, x, y):
        x_adv = self.attack_student(x, y, loss="ce")
        s_adv = self.student(x_adv)
        self.peer.train()
        p_adv = self.peer(x_adv)
        target = F.softmax(p_adv.detach().float() / self.tau[y][:, None], dim=1)
        kd = F.kl_div(F.log_softmax(s_adv.float(), dim=1), target, reduction="none").mean()
        self.class_loss.index_add_(0, y, F.cross_entropy(s_adv.detach().float(), y, reduction="none"))
        return LossSum().add("kd", kd).add("peer_ce", F.cross_entropy(p_adv.float(), y)).output()

    def end_epoch(self, epoch):
        gap = self.class_loss - self.class_loss.mean()
        self.tau.sub_(self.options.rate * gap / gap.abs().max().clamp(min=1e-12)).clamp_(0.5, 5.0)
        self.class_loss.zero_()

    def log_values(self):
        return {"tau_min": self.tau.min(), "tau_max": self.tau.max()}


# ---- a loss term shared by several methods ----------------------------------------------------------
class ToyAgreement(LossTerm):
    """γ·(epoch/E)·mean_{B×C} (softmax(S(x + δ/2)) − softmax(T(x + δ/2)))², δ = x' − x: evaluates
    the networks on an input of its own, as IGDM does (`ctx.networks`)."""

    name = "toy_agreement"

    @dataclasses.dataclass
    class Options(MethodOptions):
        toy_gamma: float = option(0.0, "weight of the toy agreement term; 0: off", at_least=0)

    @classmethod
    def from_options(cls, options):
        return cls(options.toy_gamma) if options.toy_gamma > 0 else None

    def __init__(self, gamma, teacher="robust_teacher"):
        self.gamma, self.teacher = gamma, teacher

    def weight(self, ctx):
        return self.gamma * ctx.epoch / ctx.epochs

    def __call__(self, ctx):
        middle = ctx.x + 0.5 * ctx.delta
        with torch.no_grad():
            t = F.softmax(ctx.networks[self.teacher](middle).float(), dim=1)
        s = F.softmax(ctx.networks["student"](middle).float(), dim=1)
        return ((s - t) ** 2).mean()


class ToyARD(ARD):
    """ARD with the shared toy term plugged in: its options extend ARD's with the term's."""

    name = "toy_ard"
    shared_terms = (ToyAgreement,)

    @dataclasses.dataclass
    class Options(ToyAgreement.Options, ARD.Options):
        pass


TEST_METHODS = (ToyPeer, ToyARD)


# ---- an engine callback ------------------------------------------------------------------------------
class ToyAverage(Callback):
    """The running mean of the student's weights (and buffers) after every optimiser step: a toy
    SWA. Validation, checkpoints' evaluated weights and everything downstream use it."""

    def __init__(self):
        self.average, self.count, self.calls = None, 0, []
        self.model = None

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")
        self.model = copy.deepcopy(unwrap(trainer.student)).eval()

    def after_optimizer_step(self, trainer):
        self.calls.append("step")
        current = unwrap(trainer.student).state_dict()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in current.items()}
        else:
            for k, v in current.items():
                if v.is_floating_point():
                    self.average[k].add_((v - self.average[k]) / (self.count + 1))
                else:
                    self.average[k].copy_(v)
        self.count += 1

    def on_epoch_end(self, trainer, epoch):
        self.calls.append(("epoch_end", epoch))

    def before_validation(self, trainer, epoch):
        self.calls.append(("validation", epoch))
        self.model.load_state_dict(self.average)

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")

    def eval_model(self, trainer):
        return self.model if self.average is not None else None

    def eval_weights(self, trainer):
        return None if self.average is None else (f"toy average of {self.count} steps", self.average)

    def state_dict(self):
        return {"average": self.average, "count": self.count}

    def load_state_dict(self, state):
        if state is not None:
            self.average = None if state["average"] is None else {k: v.clone() for k, v in state["average"].items()}
            self.count = int(state["count"])


BUILT = []


@pytest.fixture(scope="module", autouse=True)
def toy_average():
    """The callback for every run while this module's tests run (the contract tests included)."""
    def factory(config):
        BUILT.append(ToyAverage())
        return BUILT[-1]

    register_callback("toy_average", factory)
    try:
        yield
    finally:
        CALLBACKS.unregister("toy_average")


def run_config(tmp_path, name, **extra):
    return build_config(overrides={**TINY, "method": "toy_peer", "out_dir": str(tmp_path / name), **extra})


# ---- the tests -----------------------------------------------------------------------------------------
def test_a_peer_network_trains_beside_the_student_through_train(tmp_path):
    BUILT.clear()
    result = ciard_fast.train(run_config(tmp_path, "peer"))
    state = ckpt.load_checkpoint(result.last_checkpoint)
    # the peer is built fresh with the student's architecture, trained, and checkpointed with its optimiser
    peer, student = state["method"]["peer"], state["student"]
    assert peer.keys() == student.keys() and any(not torch.equal(peer[k], student[k]) for k in peer)
    assert state["method"]["peer_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.025)  # epoch 3 of 3: halved
    assert state["method"]["peer_optimizer"]["state"]  # momentum buffers: it did step
    # per-class temperatures moved at the epochs' ends (registered state)
    assert state["method"]["tau"].shape == (10,) and not torch.equal(state["method"]["tau"], torch.ones(10))
    assert {"train_kd", "train_peer_ce", "tau_min", "tau_max"} <= set(result.history[-1])


def test_the_peer_optimiser_is_the_engines(tmp_path):
    method = get_method("toy_peer")(tiny_convnet(seed=0), num_classes=10, epochs=4, peer=tiny_convnet(seed=1),
                                    attack=AttackSettings(8 / 255, 2 / 255, 1))
    optimizers = RunOptimizers(method, momentum=0.9, kind="sgd")
    assert optimizers.names() == ("student", "peer_optimizer")
    before = {k: v.clone() for k, v in method.peer.state_dict().items()}
    for epoch, lr in ((1, 0.05), (3, 0.025)):
        assert optimizers.set_epoch(epoch) == method.student_lr(epoch)
        assert optimizers["peer_optimizer"].param_groups[0]["lr"] == pytest.approx(lr)
    out = trainer_module.step_forward(method, optimizers, *batch(0), lambda: torch.autocast("cpu", enabled=False),
                                      None)
    trainer_module.step_update(method, optimizers, out, {})
    assert any(not torch.equal(v, before[k]) for k, v in method.peer.state_dict().items())
    with pytest.raises(ValueError, match="does not declare trainable"):
        class Bad(ToyPeer):
            networks = (Network.fresh("peer", trainable=False),)
        RunOptimizers(Bad(tiny_convnet(), num_classes=10, epochs=4, peer=tiny_convnet()), kind="sgd")
    with pytest.raises(ValueError, match="needs a peer network"):
        ToyPeer(tiny_convnet(), num_classes=10, epochs=4)


def test_the_base_class_freezes_every_network_not_declared_trainable():
    # a method that declares a teacher and never calls freeze() itself: the teacher is frozen at
    # construction and again at every epoch's start, whatever happened to the module in between
    class ToyTeacherOnly(Method):
        name = "toy_teacher_only"
        networks = (Network.teacher("robust_teacher", "robust"), Network.fresh("peer"))

    teacher, peer = tiny_convnet(seed=1).train(), tiny_convnet(seed=2).train()
    method = ToyTeacherOnly(tiny_convnet(seed=0), num_classes=10, epochs=4, robust_teacher=teacher, peer=peer)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert peer.training and all(p.requires_grad for p in peer.parameters())   # declared trainable: untouched
    teacher.train().requires_grad_(True)
    method.start_epoch(2)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert peer.training and all(p.requires_grad for p in peer.parameters())


def test_a_shared_term_plugs_into_a_method_it_does_not_know(tmp_path):
    options = ToyARD.Options(toy_gamma=2.0, tau=4.0)
    method = ToyARD(tiny_convnet(seed=0), num_classes=10, epochs=4, robust_teacher=tiny_convnet(seed=1),
                    options=options, attack=AttackSettings(8 / 255, 2 / 255, 1))
    plain = ARD(copy.deepcopy(method.student), num_classes=10, epochs=4,
                robust_teacher=copy.deepcopy(method.robust_teacher), options=ARD.Options(tau=4.0),
                attack=AttackSettings(8 / 255, 2 / 255, 1))
    method.start_epoch(3)
    plain.start_epoch(3)
    x, y = batch(5)
    recorded = {}

    def fixed_attack(self, x, y, **kwargs):  # the same x' for both (no RNG), recorded for the formula
        recorded["x_adv"] = (x + 0.03).clamp(0, 1)
        return recorded["x_adv"]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ARD, "attack_student", fixed_attack)
        out = method.training_step(x, y)
        student_before = copy.deepcopy(method.student)  # BN state after the step's forwards
        out_plain = plain.training_step(x, y)
    # the term, written out: γ·epoch/E·mean (softmax(S(m)) − softmax(T(m)))², m = (x + x')/2
    middle = x + 0.5 * (recorded["x_adv"] - x)
    student_before.train()
    with torch.no_grad():
        s = F.softmax(student_before(middle), dim=1)  # (BN in train mode: batch statistics, as in the step)
        t = F.softmax(method.robust_teacher(middle), dim=1)
    expected = ((s.double() - t.double()) ** 2).mean()
    assert out["toy_agreement"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["ard_loss"].item() == pytest.approx(out_plain["ard_loss"].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out_plain["loss"].item() + 2.0 * 3 / 4 * expected.item(), rel=1e-5)
    # off by default: then the plugged method is ARD
    assert ToyARD(tiny_convnet(), num_classes=10, epochs=4, robust_teacher=tiny_convnet())._shared_terms == ()
    with pytest.raises(TypeError, match="Options do not derive"):
        class Unplugged(ARD):
            name = "unplugged"
            shared_terms = (ToyAgreement,)
    # the term's option is checked at config time like any option of the method
    with pytest.raises(ValueError, match="toy_gamma must be >= 0"):
        build_config(overrides={"method": "toy_ard", "toy_gamma": -1.0})


def test_a_shared_term_trains_through_train(tmp_path, teacher_files):
    result = ciard_fast.train(build_config(overrides={**TINY, **teachers_of("toy_ard", teacher_files), "method": "toy_ard", "toy_gamma": 1.0,
                                                      "out_dir": str(tmp_path / "toy_ard")}))
    assert "train_toy_agreement" in result.history[-1] and "train_ard_loss" in result.history[-1]


def test_an_engine_callback_is_what_every_reader_evaluates(tmp_path, monkeypatch):
    from ciard_fast.cli_eval import read_checkpoint
    from ciard_fast.deploy.exporter import export, load_safetensors_student
    from ciard_fast.engine.model_card import weights_digest

    validated = []
    real = trainer_module.correct_clean_and_pgd
    monkeypatch.setattr(trainer_module, "correct_clean_and_pgd",
                        lambda model, *a, **k: (validated.append(model), real(model, *a, **k))[1])
    BUILT.clear()
    result = ciard_fast.train(run_config(tmp_path, "avg"))
    callback = BUILT[-1]
    steps = 3 * 3
    # the hooks, in order: fit start, per step, epoch end, validation, ..., fit end
    assert callback.calls[0] == "fit_start" and callback.calls[-1] == "fit_end"
    assert callback.calls.count("step") == steps
    assert [c for c in callback.calls if isinstance(c, tuple)] == [
        ("epoch_end", 1), ("validation", 1), ("epoch_end", 2), ("validation", 2), ("epoch_end", 3), ("validation", 3)]
    assert validated and all(model is callback.model for model in validated)  # validation measured the average
    best = ckpt.load_checkpoint(result.best_checkpoint)
    weights = ckpt.eval_weights(best)
    assert ckpt.eval_weights_source(best).startswith("toy average of")
    assert any(not torch.equal(weights[k], best["student"][k]) for k in weights)
    assert "toy average of" in result.evaluated and "toy average of" in result.table
    # the final table is the averaged weights' accuracy
    model = ciard_fast.create_model("small_cnn", num_classes=10, width=4)
    model.load_state_dict(weights)
    test = ciard_fast.load_dataset("synthetic", split="test", num_samples=64, num_test=16, image_size=16, val_size=16)
    report = ciard_fast.evaluate(model.eval(), test, attacks=("clean",), n=16, progress=False, seed=0)
    assert result.metrics["clean"] == pytest.approx(100.0 * report.accuracy["clean"])
    # the model card, `ciard-fast eval` and export read the same weights
    card = ciard_fast.engine.model_card.read_model_card(tmp_path / "avg" / "model_card.json")
    assert card["model"]["weights_sha256"] == weights_digest(weights)
    assert all(torch.equal(v, weights[k]) for k, v in read_checkpoint(result.best_checkpoint)[0].items())
    exported = export(result.best_checkpoint, format="safetensors", out=str(tmp_path / "s.safetensors"), n=8,
                      card=False, log=None)
    restored = load_safetensors_student(exported.path).state_dict()
    assert all(torch.equal(restored[k], weights[k].float()) for k in restored if k in weights)
