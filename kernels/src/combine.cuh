// combine: parameters, the gate-weighted log-sum-exp, and the per-work-item body (shared by the GPU
// kernel and its CPU twin).
#pragma once

#include "common.cuh"

namespace mf {

// logsumexp over a[0..k) exactly as torch.logsumexp: m = max (NaN propagates); m := 0 if |m| is inf;
// m + log(sum exp(a - m)).
template <int KT>
MF_HD float logsumexp_k(const float (&a)[KT], int k)
{
    float m = a[0];
#pragma unroll
    for (int j = 1; j < KT; ++j)
        if (j < k)
            m = nan_max(m, a[j]);
    if (is_inf(m))
        m = 0.0f;
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < KT; ++j)
        if (j < k)
            s += expf(a[j] - m);
    return m + logf(s);
}

template <typename T>
struct CombineParams
{
    const T* x;      // [B, k, C, H, W]
    T* out;          // [B, C, H, W]
    const void* w;   // [B, k]
    int wdtype;
    int k;
    int vec;             // elements per work item along the innermost dimension (1 or 16 bytes' worth)
    int64_t n3[3];       // sizes of (c, h, w) in the output's memory order, outermost first
    int64_t xs_b, xs_j;  // strides of expert_outputs' batch and slot dimensions
    int64_t xs3[3];      // strides of expert_outputs along n3's dimensions
    int64_t os_b;
    int64_t os3[3];
    int64_t ws_b, ws_j;
    int64_t per_sample;  // n3[0] * n3[1] * n3[2]
};

template <typename T, int KT>
MF_HD void combine_item(const CombineParams<T>& p, int64_t item)
{
    const int64_t items_per_sample = p.per_sample / p.vec;
    const int64_t b = item / items_per_sample;
    int64_t r = (item - b * items_per_sample) * p.vec;
    const int64_t d2 = r % p.n3[2];
    r /= p.n3[2];
    const int64_t d1 = r % p.n3[1];
    const int64_t d0 = r / p.n3[1];
    const int64_t xo = b * p.xs_b + d0 * p.xs3[0] + d1 * p.xs3[1] + d2 * p.xs3[2];
    const int64_t oo = b * p.os_b + d0 * p.os3[0] + d1 * p.os3[1] + d2 * p.os3[2];

    float lw[KT];
#pragma unroll
    for (int j = 0; j < KT; ++j)
        lw[j] = j < p.k ? logf(load_any(p.w, p.wdtype, b * p.ws_b + j * p.ws_j)) : 0.0f;

    if (p.vec == 1)
    {
        float a[KT];
#pragma unroll
        for (int j = 0; j < KT; ++j)
            a[j] = j < p.k ? to_f(p.x[xo + j * p.xs_j]) + lw[j] : 0.0f;
        p.out[oo] = from_f<T>(logsumexp_k<KT>(a, p.k));
        return;
    }

    constexpr int N = Vec16<T>::N;
    Vec16<T> xv[KT];
#pragma unroll
    for (int j = 0; j < KT; ++j)
        if (j < p.k)
            load16(xv[j], p.x + xo + j * p.xs_j);
    Vec16<T> ov;
#pragma unroll
    for (int e = 0; e < N; ++e)
    {
        float a[KT];
#pragma unroll
        for (int j = 0; j < KT; ++j)
            a[j] = j < p.k ? to_f(xv[j].v[e]) + lw[j] : 0.0f;
        ov.v[e] = from_f<T>(logsumexp_k<KT>(a, p.k));
    }
    store16(p.out + oo, ov);
}

} // namespace mf
