// The fused PGD step on a CUDA device (see ciard_native.h): one thread per element, one read
// of x, x0, g and one write. Same arithmetic as pgd_step.c; __fadd_rn / __fmul_rn keep nvcc
// from contracting into FMAs so the fp32 result is bit-identical to the reference.
#include <cuda_runtime.h>

#include "ciard_native.h"

namespace {

// NaN-propagating max / min, as torch.max / torch.min (fmaxf / fminf would drop a NaN).
__device__ __forceinline__ float max_nan(float a, float b) {
    const float m = a > b ? a : b;
    return a != a ? a : m;
}
__device__ __forceinline__ float min_nan(float a, float b) {
    const float m = a < b ? a : b;
    return a != a ? a : m;
}

__global__ void pgd_step_kernel(const float *__restrict__ x, const float *__restrict__ x0,
                                const float *__restrict__ grad, float *out, int64_t numel,
                                int64_t inner, const float *__restrict__ eps, int64_t eps_stride,
                                const float *__restrict__ alpha, int64_t alpha_stride) {
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < numel; i += stride) {
        const int64_t b = i / inner;
        const float e = eps[b * eps_stride];
        const float a = alpha[b * alpha_stride];
        const float g = grad[i];
        const float s = (float)((g > 0.0f) - (g < 0.0f));
        const float lo = __fsub_rn(x0[i], e);
        const float hi = __fadd_rn(x0[i], e);
        float v = __fadd_rn(x[i], __fmul_rn(a, s));
        v = min_nan(max_nan(v, lo), hi);
        out[i] = min_nan(max_nan(v, 0.0f), 1.0f);
    }
}

}  // namespace

extern "C" int ciard_pgd_step_f32_cuda(const float *x, const float *x0, const float *grad, float *out,
                                       int64_t batch, int64_t inner, const float *eps,
                                       int64_t eps_stride, const float *alpha, int64_t alpha_stride,
                                       void *stream) {
    if (!x || !x0 || !grad || !out || !eps || !alpha || batch < 0 || inner < 0 ||
        (eps_stride != 0 && eps_stride != 1) || (alpha_stride != 0 && alpha_stride != 1))
        return (int)cudaErrorInvalidValue;
    const int64_t numel = batch * inner;
    if (numel == 0) return 0;
    const int threads = 256;
    // A grid-stride loop: a few waves are enough to saturate memory bandwidth.
    const int64_t wanted = (numel + threads - 1) / threads;
    const int blocks = (int)(wanted < 65535 ? wanted : 65535);
    pgd_step_kernel<<<blocks, threads, 0, (cudaStream_t)stream>>>(x, x0, grad, out, numel, inner, eps,
                                                                  eps_stride, alpha, alpha_stride);
    return (int)cudaGetLastError();
}

extern "C" int ciard_native_has_cuda(void) { return 1; }
