/* The fused PGD step on the CPU (see ciard_native.h). Built without -ffast-math and with
 * floating-point contraction off, so every operation rounds exactly as torch's fp32 ops do:
 * the result is bit-identical to kernels/reference.py in fp32. */
#include <math.h>
#include <stddef.h>

#include "ciard_native.h"

/* torch.max / torch.min propagate NaN; fmaxf / fminf would drop it. `a > b ? a : b` already
 * returns a NaN b; the second select catches a NaN a. Both are selects, not branches, so the
 * loop vectorises (a branchy version mispredicts on random signs and runs ~10x slower). */
static inline float max_nan(float a, float b) {
    const float m = a > b ? a : b;
    return a != a ? a : m;
}
static inline float min_nan(float a, float b) {
    const float m = a < b ? a : b;
    return a != a ? a : m;
}

int ciard_pgd_step_f32(const float *x, const float *x0, const float *grad, float *out,
                       int64_t batch, int64_t inner,
                       const float *eps, int64_t eps_stride,
                       const float *alpha, int64_t alpha_stride) {
    if (!x || !x0 || !grad || !out || !eps || !alpha || batch < 0 || inner < 0 ||
        (eps_stride != 0 && eps_stride != 1) || (alpha_stride != 0 && alpha_stride != 1))
        return -1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t b = 0; b < batch; ++b) {
        const float e = eps[b * eps_stride];
        const float a = alpha[b * alpha_stride];
        const int64_t base = b * inner;
        for (int64_t j = 0; j < inner; ++j) {
            const int64_t i = base + j;
            const float g = grad[i];
            /* torch.sign: (g > 0) - (g < 0), so 0 for ±0 and NaN */
            const float s = (float)((g > 0.0f) - (g < 0.0f));
            const float lo = x0[i] - e;
            const float hi = x0[i] + e;
            float v = x[i] + a * s; /* a * s is exact: s is -1, 0 or 1 */
            v = min_nan(max_nan(v, lo), hi);
            out[i] = min_nan(max_nan(v, 0.0f), 1.0f);
        }
    }
    return 0;
}

#ifndef CIARD_NATIVE_WITH_CUDA
int ciard_native_has_cuda(void) { return 0; }
#endif
