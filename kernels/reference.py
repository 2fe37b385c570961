"""Pure-torch definitions of every fused op: the ground truth for tests and benchmarks, and the
CPU path. Each function here has a Triton twin in this package that must agree with it.

Knows nothing of ciard_fast (kernels are a leaf of the layering).
"""
import torch
import torch.nn.functional as F

# The "+1e-5" inside log(p + 1e-5) is the convention of the MTARD/B-MTARD/CIARD reference code
# (docs/method.md, "Elementwise KL").
KL_EPS = 1e-5


def compute_dtype(tensor):
    """The dtype a loss on `tensor` is computed in: float64 stays float64 (so gradchecks and exact
    comparisons are possible); float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def upcast(tensor):
    """`tensor` in its compute dtype (see `compute_dtype`); no copy when it already is."""
    return tensor.to(compute_dtype(tensor))


def _as_per_sample(value, like):
    """Scalar -> float; tensor of shape [B] or [] -> broadcastable to `like` ([B, ...])."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value.to(like.dtype)
        return value.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return float(value)


def pgd_step(x, x0, grad, eps, alpha, out=None):
    """One L∞ PGD step: clamp₀₁(min(max(x + α·sign(g), x₀ − ε), x₀ + ε)).

    x, x0, grad: same shape [B, ...]; eps, alpha: Python floats, 0-d tensors or per-sample [B]
    tensors. sign(0) = 0. Returns a new tensor, or writes into `out` (which may be `x`).
    """
    eps = _as_per_sample(eps, x)
    alpha = _as_per_sample(alpha, x)
    stepped = x + alpha * torch.sign(grad)
    projected = torch.min(torch.max(stepped, x0 - eps), x0 + eps)
    result = projected.clamp_(0.0, 1.0)
    if out is not None:
        out.copy_(result)
        return out
    return result


def pgd_random_start(x0, eps, kind="uniform", sigma=0.001, generator=None, clamp=True):
    """Random start of PGD, clamped to [0, 1] unless `clamp=False`.

    kind="uniform": x₀ + U(−ε, ε) (Madry et al.); kind="normal": x₀ + σ·N(0, I) (TRADES/RSLAD/CIARD,
    σ = 0.001). The noise is drawn with torch's RNG (`generator` if given) in float32, or in
    float64 for a float64 x₀. clamp=False keeps the start unclamped, as the public CIARD code
    does (a pixel within ~σ of 0 or 1 may start slightly outside [0, 1]).
    """
    draw_dtype = compute_dtype(x0)
    if kind == "uniform":
        eps = _as_per_sample(eps, x0)
        noise = torch.rand(x0.shape, device=x0.device, dtype=draw_dtype, generator=generator)
        noise = (noise * 2 - 1).to(x0.dtype) * eps
    elif kind == "normal":
        noise = torch.randn(x0.shape, device=x0.device, dtype=draw_dtype, generator=generator)
        noise = (noise * sigma).to(x0.dtype)
    else:
        raise ValueError(f"random start kind must be 'uniform' or 'normal', got {kind!r}")
    start = x0 + noise
    return start.clamp_(0.0, 1.0) if clamp else start


def elementwise_kl(p, log_q):
    """kl(p, log q) = p·(log(p + 1e-5) − log q), elementwise (no reduction)."""
    return p * (torch.log(p + KL_EPS) - log_q)


def per_row_temperature(tau, labels, num_classes, name="tau"):
    """A temperature as it divides [B, C] logits: a number or 0-d tensor as it is; a per-class
    [C] tensor as the column [B, 1] of each row's class, τ[labels_i] (not a per-column divisor).
    ValueError for any other shape (a per-sample [B] temperature is not a form of this loss)."""
    if not isinstance(tau, torch.Tensor) or tau.dim() == 0:
        return tau
    if tau.dim() != 1 or tau.shape[0] != num_classes:
        raise ValueError(f"{name} must be a number, a 0-d tensor or a per-class [{num_classes}] tensor, got shape "
                         f"{tuple(tau.shape)}")
    return tau[labels].unsqueeze(1)


def distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push):
    """The CIARD multi-teacher loss terms (CIARD method, steps 3-5 and 7 of docs/method.md), in
    float32 (float64 when s_adv is float64; float16/bfloat16 logits are computed in float32).

    s_adv, s_nat: student logits on x' and x, [B, C] (the only inputs that receive gradients).
    r_adv: robust teacher on x'; n_nat, n_adv: clean teacher on x and x' ([B, C], detached).
    labels: [B] int64. tau_adv, tau_nat: temperatures: floats, 0-d tensors, or per-class [C]
    tensors (row i of the teacher's logits is divided by τ[labels_i]). T_push: float.

    Returns a tuple of 0-d tensors in the compute dtype (L_adv, L_nat, L_push, H_a, H_n, mask_count):
      L_adv  = mean_{B×C} kl(softmax(r_adv/τ_adv), log_softmax(s_adv))
      L_nat  = mean_{B×C} kl(softmax(n_nat/τ_nat), log_softmax(s_nat))
      M      = {i : argmax n_adv_i ≠ y_i}
      L_push = Σ_{i∈M, c} kl(softmax(n_adv), log_softmax(s_adv/T_push)) / (|M|·C)   (0 if M = ∅)
      H_a    = mean_{B×C} p_a·log(p_a + 1e-5),  p_a = softmax(r_adv/τ_adv)   (no gradient)
      H_n    = mean_{B×C} p_n·log(p_n + 1e-5),  p_n = softmax(n_nat/τ_nat)   (no gradient)
      mask_count = |M| in the compute dtype
    """
    dtype = compute_dtype(s_adv)
    s_adv = s_adv.to(dtype)
    s_nat = s_nat.to(dtype)
    r_adv = r_adv.detach().to(dtype)
    n_nat = n_nat.detach().to(dtype)
    n_adv = n_adv.detach().to(dtype)
    num_classes = s_adv.shape[1]
    tau_adv = per_row_temperature(tau_adv, labels, num_classes, "tau_adv")
    tau_nat = per_row_temperature(tau_nat, labels, num_classes, "tau_nat")

    p_a = F.softmax(r_adv / tau_adv, dim=1)
    p_n = F.softmax(n_nat / tau_nat, dim=1)
    L_adv = elementwise_kl(p_a, F.log_softmax(s_adv, dim=1)).mean()
    L_nat = elementwise_kl(p_n, F.log_softmax(s_nat, dim=1)).mean()

    mask = (n_adv.argmax(dim=1) != labels).to(dtype)
    mask_count = mask.sum()
    p_push = F.softmax(n_adv, dim=1)
    push_terms = elementwise_kl(p_push, F.log_softmax(s_adv / T_push, dim=1))
    # A masked sum over a count clamped at one: an empty mask gives exactly 0, never 0/0.
    L_push = (push_terms * mask[:, None]).sum() / (mask_count.clamp(min=1.0) * num_classes)

    H_a = (p_a * torch.log(p_a + KL_EPS)).mean()
    H_n = (p_n * torch.log(p_n + KL_EPS)).mean()
    return L_adv, L_nat, L_push, H_a, H_n, mask_count
