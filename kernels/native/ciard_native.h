/* C ABI of libciard_native: the fused PGD step of kernels/reference.py, in plain C (CPU) and
 * CUDA (when built with a CUDA toolkit). Loaded from Python by kernels/native/__init__.py.
 *
 *   out[i] = clamp01( min( max(x[i] + alpha_b * sign(g[i]), x0[i] - eps_b), x0[i] + eps_b ) )
 *
 * Arrays are contiguous float32 [batch * inner]; element i belongs to sample b = i / inner.
 * eps and alpha point to one value (stride 0) or to `batch` values (stride 1). out may alias x.
 * sign(0) = sign(NaN) = 0 and NaN inputs propagate through min/max/clamp, as in torch.
 */
#ifndef CIARD_NATIVE_H
#define CIARD_NATIVE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Returns 0 on success, -1 on invalid arguments (null pointer, negative sizes, stride not 0/1). */
int ciard_pgd_step_f32(const float *x, const float *x0, const float *grad, float *out,
                       int64_t batch, int64_t inner,
                       const float *eps, int64_t eps_stride,
                       const float *alpha, int64_t alpha_stride);

/* Same on device pointers, launched on `stream` (a cudaStream_t, NULL = default stream);
 * returns 0 or a cudaError_t value. Present only in a CUDA build. */
int ciard_pgd_step_f32_cuda(const float *x, const float *x0, const float *grad, float *out,
                            int64_t batch, int64_t inner,
                            const float *eps, int64_t eps_stride,
                            const float *alpha, int64_t alpha_stride, void *stream);

/* 1 if this build contains the CUDA entry point, else 0. */
int ciard_native_has_cuda(void);

#ifdef __cplusplus
}
#endif

#endif
