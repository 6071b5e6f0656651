// attention split: fg = cat(x0*a, x1*a), bg = cat(x0*(1-a), x1*(1-a)) in one pass over x0, x1, a.
#include "common.cuh"

namespace mf {

namespace {

template <typename T>
struct SplitParams
{
    const T* x0;
    const T* x1;
    const T* att;
    T* fg; // may be null
    T* bg; // may be null
    int vec;
    int64_t n3[3]; // sizes of (c, h, w) in x0's memory order, outermost first
    int64_t x0s_b, x0s3[3];
    int64_t x1s_b, x1s3[3];
    int64_t as_b, as3[3]; // att strides (0 along the channel dimension)
    int64_t fgs_b, fgs3[3], fg_second; // fg_second: offset of the second modality (C * channel stride)
    int64_t bgs_b, bgs3[3], bg_second;
    int64_t per_sample;
};

template <typename T>
MF_HD void split_one(const SplitParams<T>& p, float x0, float x1, float a, T* fg0, T* bg0)
{
    // 1 - a is rounded to the storage type first, as an eager PyTorch `x * (1 - att)` does.
    const float om = to_f(from_f<T>(1.0f - a));
    if (p.fg)
    {
        fg0[0] = from_f<T>(x0 * a);
        fg0[p.fg_second] = from_f<T>(x1 * a);
    }
    if (p.bg)
    {
        bg0[0] = from_f<T>(x0 * om);
        bg0[p.bg_second] = from_f<T>(x1 * om);
    }
}

template <typename T>
MF_HD void split_item(const SplitParams<T>& p, int64_t item)
{
    const int64_t items_per_sample = p.per_sample / p.vec;
    const int64_t b = item / items_per_sample;
    int64_t r = (item - b * items_per_sample) * p.vec;
    const int64_t d2 = r % p.n3[2];
    r /= p.n3[2];
    const int64_t d1 = r % p.n3[1];
    const int64_t d0 = r / p.n3[1];
    const int64_t o0 = b * p.x0s_b + d0 * p.x0s3[0] + d1 * p.x0s3[1] + d2 * p.x0s3[2];
    const int64_t o1 = b * p.x1s_b + d0 * p.x1s3[0] + d1 * p.x1s3[1] + d2 * p.x1s3[2];
    const int64_t oa = b * p.as_b + d0 * p.as3[0] + d1 * p.as3[1] + d2 * p.as3[2];
    const int64_t of = b * p.fgs_b + d0 * p.fgs3[0] + d1 * p.fgs3[1] + d2 * p.fgs3[2];
    const int64_t ob = b * p.bgs_b + d0 * p.bgs3[0] + d1 * p.bgs3[1] + d2 * p.bgs3[2];

    if (p.vec == 1)
    {
        split_one(p, to_f(p.x0[o0]), to_f(p.x1[o1]), to_f(p.att[oa]), p.fg ? p.fg + of : nullptr,
            p.bg ? p.bg + ob : nullptr);
        return;
    }
    constexpr int N = Vec16<T>::N;
    Vec16<T> v0, v1, f0, f1, g0, g1;
    load16(v0, p.x0 + o0);
    load16(v1, p.x1 + o1);
#pragma unroll
    for (int e = 0; e < N; ++e)
    {
        const float a = to_f(p.att[oa + e * p.as3[2]]);
        const float om = to_f(from_f<T>(1.0f - a));
        const float x0 = to_f(v0.v[e]), x1 = to_f(v1.v[e]);
        f0.v[e] = from_f<T>(x0 * a);
        f1.v[e] = from_f<T>(x1 * a);
        g0.v[e] = from_f<T>(x0 * om);
        g1.v[e] = from_f<T>(x1 * om);
    }
    if (p.fg)
    {
        store16(p.fg + of, f0);
        store16(p.fg + of + p.fg_second, f1);
    }
    if (p.bg)
    {
        store16(p.bg + ob, g0);
        store16(p.bg + ob + p.bg_second, g1);
    }
}

template <typename T>
__global__ void __launch_bounds__(256) split_kernel(SplitParams<T> p, int64_t items)
{
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        split_item<T>(p, i);
}

template <typename T>
int split_impl(const moefusion_tensor* x0, const moefusion_tensor* x1, const moefusion_tensor* att,
    const moefusion_tensor* fg, const moefusion_tensor* bg, cudaStream_t stream, bool host)
{
    const bool has_fg = fg && fg->data;
    const bool has_bg = bg && bg->data;
    SplitParams<T> p{};
    p.x0 = static_cast<const T*>(x0->data);
    p.x1 = static_cast<const T*>(x1->data);
    p.att = static_cast<const T*>(att->data);
    p.fg = has_fg ? static_cast<T*>(fg->data) : nullptr;
    p.bg = has_bg ? static_cast<T*>(bg->data) : nullptr;
    const int64_t C = x0->shape[1];

    int order[3];
    memory_order3(&x0->shape[1], &x0->stride[1], order);
    p.per_sample = 1;
    for (int i = 0; i < 3; ++i)
    {
        const int d = 1 + order[i];
        p.n3[i] = x0->shape[d];
        p.x0s3[i] = x0->stride[d];
        p.x1s3[i] = x1->stride[d];
        p.as3[i] = d == 1 ? 0 : att->stride[d];
        p.fgs3[i] = has_fg ? fg->stride[d] : 0;
        p.bgs3[i] = has_bg ? bg->stride[d] : 0;
        p.per_sample *= p.n3[i];
    }
    p.x0s_b = x0->stride[0];
    p.x1s_b = x1->stride[0];
    p.as_b = att->stride[0];
    p.fgs_b = has_fg ? fg->stride[0] : 0;
    p.bgs_b = has_bg ? bg->stride[0] : 0;
    p.fg_second = has_fg ? C * fg->stride[1] : 0;
    p.bg_second = has_bg ? C * bg->stride[1] : 0;

    const int vec = Vec16<T>::N;
    bool can_vec = p.n3[2] % vec == 0 && p.x0s3[2] == 1 && p.x1s3[2] == 1 && aligned16(p.x0) && aligned16(p.x1);
    const int64_t outer[] = {p.x0s_b, p.x0s3[0], p.x0s3[1], p.x1s_b, p.x1s3[0], p.x1s3[1]};
    for (int64_t s : outer)
        can_vec = can_vec && s % vec == 0;
    if (has_fg)
    {
        can_vec = can_vec && p.fgs3[2] == 1 && aligned16(p.fg) && p.fgs_b % vec == 0 && p.fgs3[0] % vec == 0
            && p.fgs3[1] % vec == 0 && p.fg_second % vec == 0;
    }
    if (has_bg)
    {
        can_vec = can_vec && p.bgs3[2] == 1 && aligned16(p.bg) && p.bgs_b % vec == 0 && p.bgs3[0] % vec == 0
            && p.bgs3[1] % vec == 0 && p.bg_second % vec == 0;
    }
    p.vec = can_vec ? vec : 1;

    const int64_t items = x0->shape[0] * p.per_sample / p.vec;
    if (host)
    {
        for (int64_t i = 0; i < items; ++i)
            split_item<T>(p, i);
        return MOEFUSION_SUCCESS;
    }
    if (items == 0 || (!has_fg && !has_bg))
        return MOEFUSION_SUCCESS;
    split_kernel<T><<<static_cast<unsigned>(grid_for(items, 256)), 256, 0, stream>>>(p, items);
    return check_launch("moefusion_attention_split");
}

int split_entry(const moefusion_tensor* x0, const moefusion_tensor* x1, const moefusion_tensor* att,
    const moefusion_tensor* fg, const moefusion_tensor* bg, cudaStream_t stream, bool host)
{
    clear_error();
    int st;
    if ((st = check_tensor(x0, "x0", 4, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(x1, "x1", 4, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(att, "att", 4, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(fg, "fg", 4, kFloatTypes, true)) != 0)
        return st;
    if ((st = check_tensor(bg, "bg", 4, kFloatTypes, true)) != 0)
        return st;
    const int64_t B = x0->shape[0], C = x0->shape[1], H = x0->shape[2], W = x0->shape[3];
    for (int i = 0; i < 4; ++i)
        if (x1->shape[i] != x0->shape[i])
            return fail(MOEFUSION_ERROR_INVALID_VALUE, "x1: shape differs from x0's in dimension %d", i);
    if (att->shape[0] != B || att->shape[1] != 1 || att->shape[2] != H || att->shape[3] != W)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "att: expected shape [%lld, 1, %lld, %lld]", (long long) B,
            (long long) H, (long long) W);
    const moefusion_tensor* outs[2] = {fg, bg};
    const char* names[2] = {"fg", "bg"};
    for (int o = 0; o < 2; ++o)
    {
        const moefusion_tensor* t = outs[o];
        if (!t || !t->data)
            continue;
        if (t->shape[0] != B || t->shape[1] != 2 * C || t->shape[2] != H || t->shape[3] != W)
            return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: expected shape [%lld, %lld, %lld, %lld]", names[o],
                (long long) B, (long long) (2 * C), (long long) H, (long long) W);
        if (t->dtype != x0->dtype)
            return fail(MOEFUSION_ERROR_INVALID_VALUE, "%s: dtype differs from x0's", names[o]);
    }
    if (x1->dtype != x0->dtype || att->dtype != x0->dtype)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "x0, x1 and att must have one dtype");
    if (x0->dtype == MOEFUSION_FLOAT16)
        return split_impl<__half>(x0, x1, att, fg, bg, stream, host);
    return split_impl<float>(x0, x1, att, fg, bg, stream, host);
}

} // namespace
} // namespace mf

extern "C" {

MOEFUSION_API int moefusion_attention_split(const moefusion_tensor* x0, const moefusion_tensor* x1,
    const moefusion_tensor* att, const moefusion_tensor* fg, const moefusion_tensor* bg, moefusion_stream_t stream)
{
    return mf::split_entry(x0, x1, att, fg, bg, reinterpret_cast<cudaStream_t>(stream), false);
}

MOEFUSION_API int moefusion_host_attention_split(const moefusion_tensor* x0, const moefusion_tensor* x1,
    const moefusion_tensor* att, const moefusion_tensor* fg, const moefusion_tensor* bg)
{
    return mf::split_entry(x0, x1, att, fg, bg, nullptr, true);
}

} // extern "C"
