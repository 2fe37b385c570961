"""The engine's side of the method contract: options checked at config time, declared networks
and optimisers, the step's return contract, the checkpoint's method entry and its errors, engine
callbacks, the one accessor of evaluated weights, loss sums, the one list of random starts."""
import dataclasses
from typing import Optional, Tuple

import pytest
import torch

import ciard_fast
from ciard_fast.attacks.pgd import RANDOM_STARTS, TRAINING_RANDOM_STARTS
from ciard_fast.config import build_config
from ciard_fast.engine import api as api_module
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine.callbacks import CALLBACKS, Callback, build_callbacks, register_callback
from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.engine.teachers import teacher_roles
from ciard_fast.engine.trainer import check_step_output
from ciard_fast.methods import (METHODS, AttackSettings, LossSum, Method, MethodOptions, Network, OptimizerSpec,
                                get_method, make_options, option, register_method, register_variant)
from ciard_fast.methods import base as base_module
from ciard_fast.options import check_option_fields, option_help, option_rule

from _tiny import tiny_convnet
from method_contract import TINY, teacher_files, teachers_of  # noqa: F401  (a fixture)


# ---- options: checked where they are built, which the config does --------------------------------
def test_a_bad_option_fails_when_the_config_is_built_before_any_data_or_teacher(monkeypatch, tmp_path):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded or a teacher resolved")

    monkeypatch.setattr(api_module, "load_splits", no_data)
    monkeypatch.setattr(api_module, "ensure_teachers", no_data)
    with pytest.raises(ValueError, match=r"method 'mtard': eta_w must be in \[0, 1\], got 2.0"):
        ciard_fast.train(method="mtard", eta_w=2.0, out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"method 'ciard': eta_w must be in \[0, 1\]"):  # inherited from MTARD's
        build_config(overrides={"method": "ciard", "eta_w": 1.5})
    with pytest.raises(ValueError, match="itt_momentum must be in \\[0, 1\\)"):
        build_config(overrides={"method": "ciard", "itt_momentum": 1.0})
    with pytest.raises(ValueError, match="w_nat=0.3 sets the adaptive weights' start, but weighting='fixed' uses none"):
        build_config(overrides={"method": "ciard", "weighting": "fixed", "w_nat": 0.3})
    with pytest.raises(ValueError, match="method 'ard' has no option"):
        make_options("ard", {"eta_w": 0.1})
    with pytest.raises(ValueError, match="eta_w"):  # derived configs are checked too
        dataclasses.replace(build_config(overrides={"method": "mtard"}), method_args={"eta_w": -1.0})
    assert not (tmp_path / "run").exists()


def test_options_inherit_their_parents_fields_and_rules():
    mtard, bmtard, ciard = (get_method(n).Options for n in ("mtard", "bmtard", "ciard"))
    assert issubclass(ciard, bmtard) and issubclass(bmtard, mtard)
    assert set(mtard.names()) < set(bmtard.names()) < set(ciard.names())
    assert issubclass(get_method("iad").Options, get_method("ard").Options)
    assert issubclass(get_method("fair_ard").Options, get_method("ard").Options)
    assert get_method("iad").Options().tau == 1.0 and get_method("ard").Options().tau == 30.0  # a default overridden
    field = {f.name: f for f in dataclasses.fields(ciard)}["eta_w"]
    assert option_rule(field) == "in [0, 1]" and "learning rate" in option_help(field)


def test_a_renamed_option_is_read_under_its_former_name_and_never_shadows_a_config_field():
    from ciard_fast.config import TrainConfig
    from ciard_fast.engine.cli_train import parse_extra

    # --teacher_lr is the config field (the lr of teachers trained first), for CIARD as for every method
    config = build_config(overrides={"method": "ciard", "teacher_lr": 0.05})
    assert (config.teacher_lr, config.method_args) == (0.05, {})
    assert parse_extra(["--teacher_lr", "0.05", "--itt_lr", "3e-4"], "ciard") == {"teacher_lr": 0.05, "itt_lr": 3e-4}
    assert build_config(overrides={"method": "ciard", "itt_lr": 3e-4}).method_args == {"itt_lr": 3e-4}
    # the option's former names, in a YAML file's method_args, a flat key, or an old checkpoint's config
    with pytest.warns(FutureWarning, match="'teacher_lr' is now called 'itt_lr'"):
        config = build_config(overrides={"method": "ciard", "method_args": {"teacher_lr": 3e-4}})
    assert (config.teacher_lr, config.method_args) == (TrainConfig.teacher_lr, {"itt_lr": 3e-4})
    with pytest.warns(FutureWarning, match="'teacher_momentum' is now called 'itt_momentum'"):
        assert build_config(overrides={"method": "ciard", "teacher_momentum": 0.5}).method_args == {"itt_momentum": 0.5}
    with pytest.warns(FutureWarning):
        assert TrainConfig(method="ciard", method_args={"teacher_weight_decay": 0.0}).method_args == \
            {"itt_weight_decay": 0.0}
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="itt_momentum must be in"):
        build_config(overrides={"method": "ciard", "method_args": {"teacher_momentum": 1.0}})
    with pytest.raises(ValueError, match="'teacher_lr' is the former name of 'itt_lr'; give only 'itt_lr'"):
        build_config(overrides={"method": "ciard", "method_args": {"teacher_lr": 1e-4, "itt_lr": 2e-4}})
    # R's ITT optimiser takes its lr from the option under its new name
    from ciard_fast.schedules import ciard_teacher_lr

    cls = get_method("ciard")
    method = cls(tiny_convnet(), num_classes=10, epochs=12, robust_teacher=tiny_convnet(seed=1),
                 clean_teacher=tiny_convnet(seed=2), options=cls.Options(itt_lr=3e-4))
    assert method.teacher_lr(7) == ciard_teacher_lr(7, 12, 3e-4, start_epoch=2.0) > 0


def test_option_fields_check_type_range_and_choices_and_read_numbers_in_tuples():
    @dataclasses.dataclass
    class Options(MethodOptions):
        rate: float = option(0.5, "a rate", greater_than=0, at_most=1)
        mode: Optional[str] = option(None, "a mode", choices=(None, "a", "b"))
        epochs: Tuple[int, ...] = option((1, 2), "epochs", at_least=0)
        pair: Tuple[float, float] = option((0.5, 2.0), "a pair")

        def check(self):
            if self.pair[0] > self.pair[1]:
                raise ValueError("pair must be increasing")

    assert Options(epochs=["3", "4"], pair=("0.5", "2")).epochs == (3, 4)
    assert Options(epochs=[5]).epochs == (5,)                     # YAML lists become tuples
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\], got 0"):
        Options(rate=0)
    with pytest.raises(ValueError, match="rate must be finite"):
        Options(rate=float("nan"))
    with pytest.raises(ValueError, match="mode must be one of None, a, b; got 'c'"):
        Options(mode="c")
    with pytest.raises(ValueError, match="epochs must be >= 0, got -1"):
        Options(epochs=(1, -1))
    with pytest.raises(ValueError, match="epochs must be a sequence of numbers"):
        Options(epochs=("x",))
    with pytest.raises(TypeError, match="option field 'rate' must be a number, got '0.5'"):
        Options(rate="0.5")
    with pytest.raises(TypeError, match="option field 'pair' must be a list of a number"):
        Options(pair=(1.0,))
    with pytest.raises(ValueError, match="pair must be increasing"):
        Options(pair=(2.0, 1.0))
    with pytest.raises(TypeError, match="at most one lower bound"):
        option(1.0, at_least=0, greater_than=0)

    @dataclasses.dataclass
    class Plain:  # a method's options written before MethodOptions: checked by their annotations
        scale: float = 1.0

    with pytest.raises(TypeError, match="scale"):
        check_option_fields(Plain(scale="2"))


# ---- declared networks and optimisers ---------------------------------------------------------------
def test_network_and_optimizer_declarations_are_checked():
    with pytest.raises(ValueError, match="other than 'student'"):
        Network.fresh("student")
    with pytest.raises(ValueError, match="source must be one of"):
        Network("peer", source="file")
    with pytest.raises(ValueError, match="names its slot"):
        Network("peer", source="fresh", slot="robust")
    with pytest.raises(ValueError, match="model comes from its config slot"):
        Network("teacher", source="teacher", slot="robust", model="resnet18")
    with pytest.raises(ValueError, match="name other than 'student'"):
        OptimizerSpec("student", roles=("peer",), lr=lambda e: 0.1)
    with pytest.raises(ValueError, match="roles must be a non-empty tuple"):
        OptimizerSpec("peer", roles="peer", lr=lambda e: 0.1)
    with pytest.raises(TypeError, match="schedule"):
        OptimizerSpec("peer", roles=("peer",), lr=0.1)
    ard = get_method("ard")
    with pytest.raises(TypeError, match=r"no network role\(s\) \['peer'\]; its roles: robust_teacher"):
        ard(tiny_convnet(), num_classes=10, epochs=2, robust_teacher=tiny_convnet(), peer=tiny_convnet())


def test_the_two_slot_shorthand_still_declares_teachers():
    class Legacy(Method):
        name = "legacy_two_slot"
        needs_robust_teacher = True

    assert Legacy.networks == (Network.teacher("robust_teacher", "robust"),) and not Legacy.needs_clean_teacher
    assert get_method("ciard").needs_robust_teacher and get_method("ciard").needs_clean_teacher
    assert not get_method("sat").needs_robust_teacher
    # the declaration decides which teachers a run resolves, and under which role
    assert teacher_roles("ciard") == {"robust": "robust_teacher", "clean": "clean_teacher"}
    assert teacher_roles("rslad") == {"robust": "robust_teacher"} and teacher_roles("trades") == {}


def test_a_teacher_slot_that_does_not_exist_is_named():
    class OddSlot(Method):
        name = "odd_slot"
        networks = (Network.teacher("mentor", "wise"),)

    register_method(OddSlot)
    try:
        with pytest.raises(ValueError, match="network 'mentor' names teacher slot 'wise'; the slots are robust, clean"):
            teacher_roles("odd_slot")
    finally:
        METHODS.unregister("odd_slot")


def test_itt_off_declares_a_frozen_robust_teacher_and_no_optimiser():
    cls = get_method("ciard")
    on, off = cls.Options(), cls.Options(itt=False)
    assert cls.declare_networks(on)[0].trainable and not cls.declare_networks(off)[0].trainable
    method = cls(tiny_convnet(), num_classes=10, epochs=6, robust_teacher=tiny_convnet(), clean_teacher=tiny_convnet(),
                 options=off)
    assert RunOptimizers(method, kind="sgd").names() == ("student",) and method.trainable_roles() == ("student",)


# ---- variants ---------------------------------------------------------------------------------------
def test_reference_code_builds_the_registered_variant():
    from ciard_fast.methods.ciard_reference import CIARDReference

    cls = get_method("ciard")
    assert cls.variants == {"reference_code": CIARDReference}
    method = cls(tiny_convnet(), num_classes=10, epochs=6, robust_teacher=tiny_convnet(), clean_teacher=tiny_convnet(),
                 options=cls.Options(reference_code=True))
    assert type(method) is CIARDReference and method.name == "ciard"
    assert {"eta_tau", "eta_w"} <= set(method.state_names())
    plain = cls(tiny_convnet(), num_classes=10, epochs=6, robust_teacher=tiny_convnet(), clean_teacher=tiny_convnet())
    assert type(plain) is cls and "eta_tau" not in plain.state_names()
    with pytest.raises(ValueError, match="reference_code: true variant"):
        CIARDReference(tiny_convnet(), num_classes=10, epochs=6, robust_teacher=tiny_convnet(),
                       clean_teacher=tiny_convnet(), options=cls.Options(reference_code=False))
    with pytest.raises(TypeError, match="no boolean option 'nope'"):
        register_variant("nope")(type("Nope", (cls,), {}))


# ---- the step's return contract ----------------------------------------------------------------------
def test_the_step_output_contract_is_checked_without_a_host_sync():
    method = get_method("sat")(tiny_convnet(), num_classes=10, epochs=2)
    loss = torch.ones((), requires_grad=True) * 2
    check_step_output(method, {"loss": loss, "ce": loss.detach()})
    with pytest.raises(TypeError, match="must return a dict with a 'loss' entry"):
        check_step_output(method, {"ce": loss})
    with pytest.raises(ValueError, match=r"returned 'per_sample' as \(4,\); every entry must be a 0-d tensor"):
        check_step_output(method, {"loss": loss, "per_sample": torch.zeros(4)})
    with pytest.raises(ValueError, match="'ce' carries a gradient"):
        check_step_output(method, {"loss": loss, "ce": loss})


def test_loss_sum_adds_in_order_and_logs_every_term():
    a, b, c = (torch.tensor(v, requires_grad=True) for v in (1.0, 2.0, 3.0))
    w = torch.tensor(0.5)
    total = LossSum().add("a", a).add("b", b, weight=w).subtract("c", c, weight=2.0, logged=torch.tensor(9.0))
    total.log("count", torch.tensor(4.0))
    assert float(total.subtotal()) == 1.0 + 0.5 * 2.0 - 2.0 * 3.0
    out = total.output()
    assert list(out) == ["loss", "a", "b", "c", "count"] and float(out["c"]) == 9.0
    assert out["loss"].requires_grad and not any(v.requires_grad for k, v in out.items() if k != "loss")
    with pytest.raises(ValueError, match="added twice"):
        total.add("a", a)
    with pytest.raises(ValueError, match="other than 'loss'"):
        LossSum().add("loss", a)
    with pytest.raises(ValueError, match="no term was added"):
        LossSum().output()


def test_progress_hidden_values_are_in_the_history_not_on_the_progress_line(tmp_path, teacher_files, capsys):
    ciard_fast.train(build_config(overrides={**TINY, **teacher_files, "method": "ciard", "epochs": 1,
                                             "progress": True, "out_dir": str(tmp_path / "run")}))
    err = capsys.readouterr().err
    step_lines = [line for line in err.splitlines() if "step 3/3" in line]
    assert step_lines and all("L_push=" in line and "mask_count" not in line for line in step_lines)
    assert "train_mask_count=" in err  # the epoch summary: the history row


# ---- the checkpoint's method entry ----------------------------------------------------------------------
def test_entry_names_may_not_collide():
    class Clash(Method):
        name = "clash"
        networks = (Network.fresh("peer"),)

        def __init__(self, student, **kwargs):
            super().__init__(student, **kwargs)
            self.register_state("tau", torch.ones(3))

        def configure_optimizers(self):
            return (OptimizerSpec("tau", roles=("peer",), lr=lambda e: 0.1),)

    method = Clash(tiny_convnet(), num_classes=10, epochs=2, peer=tiny_convnet())
    with pytest.raises(ValueError, match="state tensor 'tau' and optimiser 'tau' share the checkpoint key 'tau'"):
        ckpt.check_entry_names(method, RunOptimizers(method, kind="sgd").names())
    with pytest.raises(ValueError, match="state name 'peer' is taken"):
        method.register_state("peer", torch.ones(1))


def test_a_checkpoint_without_a_declared_network_or_state_is_one_clear_error(tmp_path, teacher_files):
    config = build_config(overrides={**TINY, **teacher_files, "method": "ciard", "epochs": 2, "stop_after": 1,
                                     "out_dir": str(tmp_path / "run")})
    ciard_fast.train(config)
    path = tmp_path / "run" / "last.pt"
    state = ckpt.load_checkpoint(path)
    del state["method"]["teacher_optimizer"]
    ckpt.save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"last.pt holds no teacher_optimizer for method 'ciard'") as info:
        ciard_fast.train(resume=str(path))
    assert "\n" not in str(info.value)
    state = ckpt.load_checkpoint(path)
    state["method"]["teacher_optimizer"] = {}
    del state["method"]["tau_adv"]
    method = get_method("ciard")(tiny_convnet(), num_classes=10, epochs=2, robust_teacher=tiny_convnet(),
                                 clean_teacher=tiny_convnet())
    with pytest.raises(ValueError, match=r"holds no state \['tau_adv'\] of method 'ciard'"):
        method.load_state_dict(state["method"])


# ---- engine callbacks and the evaluated weights ------------------------------------------------------------
def test_callbacks_are_built_by_name_and_checked():
    from ciard_fast.registry import Registry

    assert ciard_fast.register_callback is register_callback and isinstance(CALLBACKS, Registry)
    register_callback("zz_not_a_callback", lambda config: object())
    try:
        with pytest.raises(TypeError, match="callback factory 'zz_not_a_callback' returned object"):
            build_callbacks(build_config())
    finally:
        CALLBACKS.unregister("zz_not_a_callback")
    register_callback("zz_off", lambda config: None)
    register_callback("zz_on", lambda config: Callback())
    try:
        built = build_callbacks(build_config())
        assert [c.name for c in built] == ["zz_on"]
    finally:
        CALLBACKS.unregister("zz_off")
        CALLBACKS.unregister("zz_on")
    with pytest.raises(TypeError, match="needs a factory"):
        register_callback("zz_bad", 3)


def test_eval_weights_is_the_one_accessor():
    student = {"w": torch.ones(2)}
    assert ckpt.eval_weights({"student": student}) is student and ckpt.eval_weights_source({"student": student}) is None
    averaged = {"w": torch.zeros(2)}
    state = {"student": student, "eval_weights": {"source": "average of 9 steps", "weights": averaged}}
    assert ckpt.eval_weights(state) is averaged and ckpt.eval_weights_source(state) == "average of 9 steps"
    with pytest.raises(ValueError, match="no student weights"):
        ckpt.eval_weights({"config": {}})


def test_a_callback_resumes_a_checkpoint_written_without_it(tmp_path, teacher_files):
    seen = []

    class Late(Callback):
        def load_state_dict(self, state):
            seen.append(state)

    config = build_config(overrides={**TINY, **teachers_of("sat", teacher_files), "method": "sat", "epochs": 2, "stop_after": 1,
                                     "out_dir": str(tmp_path / "run")})
    ciard_fast.train(config)
    register_callback("zz_late", lambda config: Late())
    try:
        ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))
    finally:
        CALLBACKS.unregister("zz_late")
    assert seen == [None]
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.pt")["callbacks"] == {"zz_late": {}}


# ---- one list of random starts ----------------------------------------------------------------------------
def test_one_list_of_random_starts():
    assert base_module.RANDOM_STARTS is TRAINING_RANDOM_STARTS
    assert TRAINING_RANDOM_STARTS == ("default",) + tuple("none" if s is None else s for s in RANDOM_STARTS)
    for start in TRAINING_RANDOM_STARTS:
        assert build_config(overrides={"attack_random_start": start}).attack_random_start == start
        chosen = AttackSettings(random_start=start).start("uniform")
        assert chosen in RANDOM_STARTS
    with pytest.raises(ValueError, match="attack_random_start must be one of default, uniform"):
        build_config(overrides={"attack_random_start": "gaussian"})
