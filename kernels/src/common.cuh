// Internals shared by the kernels: dtype helpers, error reporting, tensor checks, and the small
// "thread context" that lets each kernel's body run both on the GPU and, one simulated block at a
// time, on the CPU (the moefusion_host_* twins used by CPU tests).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "moefusion_kernels.h"

#define MF_HD __host__ __device__ __forceinline__

namespace mf {

// ------------------------------------------------------------------ errors (api.cu)
// Record a one-line message for moefusion_last_error() and return `status`.
int fail(int status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void clear_error();
// cudaGetLastError()/cudaPeekAtLastError after a launch, mapped to a status with the kernel's name.
int check_launch(const char* what);

// ------------------------------------------------------------------ dtypes
template <typename T>
MF_HD float to_f(T v);
template <>
MF_HD float to_f<float>(float v) { return v; }
template <>
MF_HD float to_f<__half>(__half v) { return __half2float(v); }

template <typename T>
MF_HD T from_f(float v);
template <>
MF_HD float from_f<float>(float v) { return v; }
template <>
MF_HD __half from_f<__half>(float v) { return __float2half_rn(v); }

// Small tensors whose dtype is only known at run time (gate weights, biases, conv weights).
MF_HD float load_any(const void* p, int dtype, int64_t off)
{
    return dtype == MOEFUSION_FLOAT16 ? __half2float(static_cast<const __half*>(p)[off])
                                      : static_cast<const float*>(p)[off];
}
MF_HD void store_any(void* p, int dtype, int64_t off, float v)
{
    if (dtype == MOEFUSION_FLOAT16)
        static_cast<__half*>(p)[off] = __float2half_rn(v);
    else
        static_cast<float*>(p)[off] = v;
}

inline size_t dtype_size(int dtype) { return dtype == MOEFUSION_FLOAT16 ? 2 : 4; }
inline const char* dtype_name(int dtype)
{
    switch (dtype)
    {
    case MOEFUSION_FLOAT32: return "float32";
    case MOEFUSION_FLOAT16: return "float16";
    case MOEFUSION_INT32: return "int32";
    default: return "unknown";
    }
}

// NaN-propagating max (fmaxf drops NaN; torch propagates it).
MF_HD float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }
MF_HD bool is_nan(float a) { return a != a; }
MF_HD bool is_inf(float a) { return fabsf(a) == INFINITY; }

// ------------------------------------------------------------------ simulated thread context
struct ThreadCtx
{
    int64_t block; // linear block index
    int tid;       // thread index in the block
    int nthreads;  // block size
};

__device__ __forceinline__ ThreadCtx this_thread()
{
    return ThreadCtx{static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
}

MF_HD void thread_fence()
{
#if defined(__CUDA_ARCH__)
    __threadfence();
#endif
}

// atomicInc(addr, limit): returns the old value and stores (old >= limit ? 0 : old + 1).
MF_HD unsigned ticket(unsigned* addr, unsigned limit)
{
#if defined(__CUDA_ARCH__)
    return atomicInc(addr, limit);
#else
    unsigned old = *addr;
    *addr = old >= limit ? 0u : old + 1u;
    return old;
#endif
}

// A load that bypasses L1 (data written by other blocks of the same launch).
MF_HD float load_cg(const float* p)
{
#if defined(__CUDA_ARCH__)
    return __ldcg(p);
#else
    return *p;
#endif
}

// ------------------------------------------------------------------ tensor checks
inline int check_tensor(const moefusion_tensor* t, const char* name, int ndim, unsigned dtype_mask, bool optional)
{
    if (t == nullptr || t->data == nullptr)
    {
        if (optional)
            return MOEFUSION_SUCCESS;
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: missing tensor (NULL descriptor or data)", name);
    }
    if (t->ndim != ndim)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: expected %d dimensions, got %d", name, ndim, t->ndim);
    if (t->dtype < 0 || t->dtype > 2 || !(dtype_mask & (1u << t->dtype)))
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: unsupported dtype %s", name, dtype_name(t->dtype));
    for (int i = 0; i < ndim; ++i)
    {
        if (t->shape[i] < 0)
            return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: negative size in dimension %d", name, i);
        if (t->stride[i] < 0)
            return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: negative stride in dimension %d", name, i);
    }
    if (reinterpret_cast<uintptr_t>(t->data) % dtype_size(t->dtype) != 0)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: data pointer not aligned to its element size", name);
    return MOEFUSION_SUCCESS;
}

constexpr unsigned kFloatTypes = (1u << MOEFUSION_FLOAT32) | (1u << MOEFUSION_FLOAT16);
constexpr unsigned kInt32 = 1u << MOEFUSION_INT32;

inline bool is_contiguous(const moefusion_tensor* t)
{
    int64_t expected = 1;
    for (int i = t->ndim - 1; i >= 0; --i)
    {
        if (t->shape[i] != 1 && t->stride[i] != expected)
            return false;
        expected *= t->shape[i];
    }
    return true;
}

inline int64_t numel(const moefusion_tensor* t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; ++i)
        n *= t->shape[i];
    return n;
}

// Number of blocks for a 1-D grid-stride launch.
inline int64_t grid_for(int64_t work, int threads)
{
    int64_t blocks = (work + threads - 1) / threads;
    if (blocks < 1)
        blocks = 1;
    const int64_t cap = 1 << 20;
    return blocks < cap ? blocks : cap;
}

// Dimension order of a [C, H, W] block by decreasing stride (the memory order), for coalesced
// iteration: order[0] is the outermost, order[2] the innermost dimension.
inline void memory_order3(const int64_t* shape3, const int64_t* stride3, int order[3])
{
    order[0] = 0;
    order[1] = 1;
    order[2] = 2;
    auto key = [&](int d) { return shape3[d] == 1 ? INT64_MAX : stride3[d]; }; // size-1 dims go outermost
    for (int i = 0; i < 3; ++i)
        for (int j = i + 1; j < 3; ++j)
            if (key(order[j]) > key(order[i]))
            {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
}

// True if a [C, H, W] block with these strides covers exactly the offsets 0 .. C*H*W-1
// (contiguous in some dimension order: NCHW, channels-last, ...).
inline bool is_dense3(const int64_t* shape3, const int64_t* stride3)
{
    int order[3];
    memory_order3(shape3, stride3, order);
    int64_t expected = 1;
    for (int i = 2; i >= 0; --i)
    {
        int d = order[i];
        if (shape3[d] != 1 && stride3[d] != expected)
            return false;
        expected *= shape3[d];
    }
    return true;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte vector of T.
template <typename T>
struct __align__(16) Vec16
{
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

// One 16-byte access on the GPU; memcpy on the host (no type punning for the host compiler's aliasing rules).
template <typename T>
MF_HD void load16(Vec16<T>& dst, const T* src)
{
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<uint4*>(dst.v) = *reinterpret_cast<const uint4*>(src);
#else
    std::memcpy(dst.v, src, 16);
#endif
}
template <typename T>
MF_HD void store16(T* dst, const Vec16<T>& src)
{
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src.v);
#else
    std::memcpy(dst, src.v, 16);
#endif
}

} // namespace mf
