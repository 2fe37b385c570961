"""Compile every Triton kernel variant for a GPU target on a machine without a GPU.

The interpreter (what the CPU tests run) accepts code that the compiler rejects, e.g. a module
global that is not tl.constexpr, or a dtype mix the type checker refuses. This script runs the
real front end, the NVIDIA lowering and ptxas for sm_90. Run by tests/test_kernels_compile.py in
a subprocess, because TRITON_INTERPRET must be unset before triton is imported.

    python tests/_triton_compile_check.py [capability]     # default 90
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ciard_fast.kernels import distill_loss_triton as loss  # noqa: E402
from ciard_fast.kernels import pgd_step_triton as step  # noqa: E402
from ciard_fast.kernels import random_start_triton as start  # noqa: E402

LOGIT_NAMES = ("s_adv_ptr", "s_nat_ptr", "r_adv_ptr", "n_nat_ptr", "n_adv_ptr")


def scalar_or_ptr(mode):
    return "fp32" if mode == 0 else "*fp32"


def variants():
    """(kernel, signature, constexprs) for each specialisation the launchers can request."""
    for dtype, grad, modes in [("fp32", "fp32", (0, 0)), ("fp32", "fp64", (1, 1)), ("bf16", "bf16", (2, 0)),
                               ("fp16", "fp32", (0, 2))]:
        sig = {"x_ptr": f"*{dtype}", "x0_ptr": f"*{dtype}", "g_ptr": f"*{grad}", "out_ptr": f"*{dtype}",
               "eps": scalar_or_ptr(modes[0]), "alpha": scalar_or_ptr(modes[1]), "numel": "i64", "inner": "i64"}
        yield step._pgd_step_kernel, sig, {"EPS_MODE": modes[0], "ALPHA_MODE": modes[1],
                                           "PER_SAMPLE_GRID": 2 in modes, "BLOCK": step.BLOCK}
    for kind, eps_mode, seed_ptr, dtype in [(0, 0, True, "fp32"), (0, 2, False, "bf16"), (1, 0, True, "fp16")]:
        sig = {"x0_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "seed": "*i64" if seed_ptr else "i64",
               "eps": scalar_or_ptr(eps_mode), "sigma": "fp32", "numel": "i64", "inner": "i64"}
        yield start._random_start_kernel, sig, {"KIND": kind, "EPS_MODE": eps_mode, "SEED_IS_PTR": seed_ptr,
                                                "PER_SAMPLE_GRID": eps_mode == 2, "BLOCK": start.BLOCK}
    for dtype, modes, classes in [("fp32", (0, 0, 0), 10), ("bf16", (1, 1, 0), 100), ("fp16", (1, 1, 1), 1000),
                                  ("fp32", (1, 0, 1), 5000)]:
        block_b, block_c = loss._blocks(classes, None)
        sig = {name: f"*{dtype}" for name in LOGIT_NAMES}
        sig.update({"labels_ptr": "*i64", "tau_adv": scalar_or_ptr(modes[0]), "tau_nat": scalar_or_ptr(modes[1]),
                    "t_push": scalar_or_ptr(modes[2]), "rows_ptr": "*fp32", "scalars_ptr": "*fp32", "B": "i32",
                    "C": "i32"})
        yield loss._distill_fwd_kernel, sig, {"TAU_ADV_MODE": modes[0], "TAU_NAT_MODE": modes[1],
                                              "T_PUSH_MODE": modes[2], "BLOCK_B": block_b, "BLOCK_C": block_c}
        sig = {name: f"*{dtype}" for name in LOGIT_NAMES}
        sig.update({"rows_ptr": "*fp32", "scalars_ptr": "*fp32", "g_adv_ptr": "*fp32",
                    "g_nat_ptr": "*fp32", "g_push_ptr": "*fp32", "grad_sa_ptr": f"*{dtype}",
                    "grad_sn_ptr": f"*{dtype}", "B": "i32", "C": "i32", "bc": "fp32", "c_f": "fp32"})
        yield loss._distill_bwd_kernel, sig, {"BLOCK_B": block_b, "BLOCK_C": block_c}
    outputs = ("l_adv_ptr", "l_nat_ptr", "l_push_ptr", "h_adv_ptr", "h_nat_ptr", "count_ptr", "scalars_ptr")
    sig = {"rows_ptr": "*fp32", **{name: "*fp32" for name in outputs}, "B": "i32", "bc": "fp32", "c_f": "fp32"}
    yield loss._distill_finalize_kernel, sig, {"BLOCK": 128}


def main(capability=90):
    target = GPUTarget("cuda", capability, 32)
    count = 0
    for kernel, signature, constexprs in variants():
        signature = {**signature, **{name: "constexpr" for name in constexprs}}
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=target)
        assert "cubin" in compiled.asm, f"{kernel.__name__}: no cubin"
        count += 1
    print(f"compiled {count} kernel variants for sm_{capability}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
