// combine: out[b] = logsumexp_j(expert_outputs[b, j] + log weights[b, j]).
// Memory-bound elementwise kernel: one work item is one element, or 16 bytes of elements along the
// innermost dimension when every tensor is unit-stride and 16-byte aligned there (NCHW rows or
// channels-last pixels, including channel slices of larger tensors).
#include "combine.cuh"

namespace mf {

namespace {

template <typename T, int KT>
__global__ void __launch_bounds__(256) combine_kernel(CombineParams<T> p, int64_t items)
{
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        combine_item<T, KT>(p, i);
}

template <typename T, int KT>
int run_combine(const CombineParams<T>& p, int64_t items, cudaStream_t stream, bool host)
{
    if (host)
    {
        for (int64_t i = 0; i < items; ++i)
            combine_item<T, KT>(p, i);
        return MOEFUSION_SUCCESS;
    }
    if (items == 0)
        return MOEFUSION_SUCCESS;
    combine_kernel<T, KT><<<static_cast<unsigned>(grid_for(items, 256)), 256, 0, stream>>>(p, items);
    return check_launch("moefusion_combine");
}

template <typename T>
int dispatch_k(const CombineParams<T>& p, int64_t items, cudaStream_t stream, bool host)
{
    if (p.k <= 1)
        return run_combine<T, 1>(p, items, stream, host);
    if (p.k <= 2)
        return run_combine<T, 2>(p, items, stream, host);
    if (p.k <= 4)
        return run_combine<T, 4>(p, items, stream, host);
    return run_combine<T, 8>(p, items, stream, host);
}

template <typename T>
int combine_impl(const moefusion_tensor* x, const moefusion_tensor* w, const moefusion_tensor* out,
    cudaStream_t stream, bool host)
{
    CombineParams<T> p{};
    p.x = static_cast<const T*>(x->data);
    p.out = static_cast<T*>(out->data);
    p.w = w->data;
    p.wdtype = w->dtype;
    p.k = static_cast<int>(x->shape[1]);
    p.xs_b = x->stride[0];
    p.xs_j = x->stride[1];
    p.os_b = out->stride[0];
    p.ws_b = w->stride[0];
    p.ws_j = w->stride[1];

    // Iterate (c, h, w) in the output's memory order so that writes are coalesced.
    int order[3];
    memory_order3(&out->shape[1], &out->stride[1], order);
    int64_t per_sample = 1;
    for (int i = 0; i < 3; ++i)
    {
        p.n3[i] = out->shape[1 + order[i]];
        p.xs3[i] = x->stride[2 + order[i]];
        p.os3[i] = out->stride[1 + order[i]];
        per_sample *= p.n3[i];
    }
    p.per_sample = per_sample;

    // 16-byte vectors along the innermost dimension when every access is unit-stride and aligned.
    const int vec = Vec16<T>::N;
    bool can_vec = p.n3[2] % vec == 0 && p.xs3[2] == 1 && p.os3[2] == 1 && aligned16(p.x) && aligned16(p.out);
    const int64_t outer_x[4] = {p.xs_b, p.xs_j, p.xs3[0], p.xs3[1]};
    const int64_t outer_o[3] = {p.os_b, p.os3[0], p.os3[1]};
    for (int64_t s : outer_x)
        can_vec = can_vec && s % vec == 0;
    for (int64_t s : outer_o)
        can_vec = can_vec && s % vec == 0;
    p.vec = can_vec ? vec : 1;

    const int64_t batch = out->shape[0];
    const int64_t items = batch * per_sample / p.vec;
    return dispatch_k<T>(p, items, stream, host);
}

int combine_entry(const moefusion_tensor* x, const moefusion_tensor* w, const moefusion_tensor* out,
    cudaStream_t stream, bool host)
{
    clear_error();
    int st;
    if ((st = check_tensor(x, "expert_outputs", 5, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(w, "weights", 2, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(out, "out", 4, kFloatTypes, false)) != 0)
        return st;
    if (out->dtype != x->dtype)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "out: dtype %s differs from expert_outputs' %s",
            dtype_name(out->dtype), dtype_name(x->dtype));
    const int64_t B = x->shape[0], k = x->shape[1];
    if (k < 1 || k > MOEFUSION_MAX_K)
        return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "expert_outputs: k = %lld outside 1..%d", (long long) k,
            MOEFUSION_MAX_K);
    if (w->shape[0] != B || w->shape[1] != k)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "weights: shape [%lld, %lld], expected [%lld, %lld]",
            (long long) w->shape[0], (long long) w->shape[1], (long long) B, (long long) k);
    if (out->shape[0] != B || out->shape[1] != x->shape[2] || out->shape[2] != x->shape[3]
        || out->shape[3] != x->shape[4])
        return fail(MOEFUSION_ERROR_INVALID_VALUE,
            "out: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]", (long long) out->shape[0],
            (long long) out->shape[1], (long long) out->shape[2], (long long) out->shape[3], (long long) B,
            (long long) x->shape[2], (long long) x->shape[3], (long long) x->shape[4]);
    if (x->dtype == MOEFUSION_FLOAT16)
        return combine_impl<__half>(x, w, out, stream, host);
    return combine_impl<float>(x, w, out, stream, host);
}

} // namespace
} // namespace mf

extern "C" {

MOEFUSION_API int moefusion_combine(const moefusion_tensor* expert_outputs, const moefusion_tensor* weights,
    const moefusion_tensor* out, moefusion_stream_t stream)
{
    return mf::combine_entry(expert_outputs, weights, out, reinterpret_cast<cudaStream_t>(stream), false);
}

MOEFUSION_API int moefusion_host_combine(
    const moefusion_tensor* expert_outputs, const moefusion_tensor* weights, const moefusion_tensor* out)
{
    return mf::combine_entry(expert_outputs, weights, out, nullptr, true);
}

} // extern "C"
