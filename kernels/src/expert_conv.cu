// expert_conv3x3_combine: the last 3x3 convolution of the k experts chosen per sample, fused with the
// gate-weighted log-sum-exp combine. CUDA-core direct convolution for thin layers.
//
// A block computes an 8x32 tile of output pixels (one per thread) for COT output channels of one sample
// and all k slots. Input channels are walked in chunks of CIC: each chunk's input tile (with its 1-pixel
// halo, zero outside the image) and the chosen experts' weights go to shared memory, then every thread
// accumulates its k*COT sums. At the end the sums get bias and log(weight) and are combined.
#include "combine.cuh"

namespace mf {

namespace {

constexpr int kTH = 8, kTW = 32, kThreads = kTH * kTW;

struct ConvParams
{
    const void* h; // [B, k, Cin, H, W]
    int hdtype;    // also out's dtype
    int64_t hs[5];
    bool chan_fastest; // load order: channels innermost (channels-last input) or x innermost
    const void* w; // [E, Cout, Cin, 3, 3]
    int wdtype;
    const void* bias; // [E, Cout] or null
    int bdtype;
    const int32_t* idx; // [B, k]
    int64_t is_b, is_j;
    const void* gw; // [B, k]
    int gwdtype;
    int64_t gs_b, gs_j;
    void* out; // [B, Cout, H, W]
    int64_t os[4];
    int B, k, E, Cin, Cout, H, W;
    int tiles_x, tiles_y, cogroups;
};

template <int KT, int COT>
struct ConvTraits
{
    static constexpr int CIC = 16 / KT; // input channels per chunk
    static constexpr int IH = kTH + 2, IW = kTW + 2;
};

template <int KT, int COT>
struct ConvShared
{
    using Tr = ConvTraits<KT, COT>;
    float in[KT][Tr::CIC][Tr::IH][Tr::IW];
    // [slot][ci][tap][co]: the COT weights a thread needs for one tap are contiguous (vector loads).
    __align__(16) float w[KT][Tr::CIC][9][COT];
    int e[KT];
    float logw[KT];
};

template <int KT, int COT>
struct ConvLocal
{
    float acc[KT][COT];
};

struct BlockPos
{
    int64_t b;
    int cog, y0, x0;
};

MF_HD BlockPos block_pos(const ConvParams& p, int64_t block)
{
    BlockPos bp;
    const int tx = static_cast<int>(block % p.tiles_x);
    block /= p.tiles_x;
    const int ty = static_cast<int>(block % p.tiles_y);
    block /= p.tiles_y;
    bp.cog = static_cast<int>(block % p.cogroups);
    bp.b = block / p.cogroups;
    bp.y0 = ty * kTH;
    bp.x0 = tx * kTW;
    return bp;
}

// Phase: the chosen experts and their log weights (threads < KT); zero the accumulators (all).
template <int KT, int COT>
MF_HD void conv_setup(const ConvParams& p, const ThreadCtx& t, ConvShared<KT, COT>& s, ConvLocal<KT, COT>& l)
{
#pragma unroll
    for (int j = 0; j < KT; ++j)
#pragma unroll
        for (int c = 0; c < COT; ++c)
            l.acc[j][c] = 0.0f;
    if (t.tid < KT)
    {
        const int j = t.tid;
        const BlockPos bp = block_pos(p, t.block);
        int e = -1;
        float lw = 0.0f;
        if (j < p.k)
        {
            e = p.idx[bp.b * p.is_b + j * p.is_j];
            if (e < 0 || e >= p.E)
                e = -1; // invalid routing: the sample's output becomes NaN (weights are poisoned below)
            lw = logf(load_any(p.gw, p.gwdtype, bp.b * p.gs_b + j * p.gs_j));
        }
        s.e[j] = e;
        s.logw[j] = lw;
    }
}

// Phase: load input channels [c0, c0 + CIC) of the tile (with halo) and the matching weights.
template <int KT, int COT>
MF_HD void conv_load(const ConvParams& p, const ThreadCtx& t, ConvShared<KT, COT>& s, int c0)
{
    using Tr = ConvTraits<KT, COT>;
    const BlockPos bp = block_pos(p, t.block);
    constexpr int plane = Tr::IH * Tr::IW;
    constexpr int total = KT * Tr::CIC * plane;
    for (int n = t.tid; n < total; n += t.nthreads)
    {
        int j, ci, yy, xx;
        if (p.chan_fastest)
        {
            ci = n % Tr::CIC;
            int r = n / Tr::CIC;
            xx = r % Tr::IW;
            r /= Tr::IW;
            yy = r % Tr::IH;
            j = r / Tr::IH;
        }
        else
        {
            xx = n % Tr::IW;
            int r = n / Tr::IW;
            yy = r % Tr::IH;
            r /= Tr::IH;
            ci = r % Tr::CIC;
            j = r / Tr::CIC;
        }
        const int gy = bp.y0 + yy - 1, gx = bp.x0 + xx - 1, c = c0 + ci;
        float v = 0.0f;
        if (j < p.k && c < p.Cin && gy >= 0 && gy < p.H && gx >= 0 && gx < p.W)
            v = load_any(p.h, p.hdtype, bp.b * p.hs[0] + j * p.hs[1] + c * p.hs[2] + gy * p.hs[3] + gx * p.hs[4]);
        s.in[j][ci][yy][xx] = v;
    }
    constexpr int wtotal = KT * Tr::CIC * 9 * COT;
    for (int n = t.tid; n < wtotal; n += t.nthreads)
    {
        const int co = n % COT;
        int r = n / COT;
        const int tap = r % 9;
        r /= 9;
        const int ci = r % Tr::CIC;
        const int j = r / Tr::CIC;
        const int cg = bp.cog * COT + co, c = c0 + ci;
        float v = 0.0f;
        if (j < p.k && cg < p.Cout && c < p.Cin)
        {
            const int e = s.e[j];
            v = e < 0 ? NAN : load_any(p.w, p.wdtype, ((static_cast<int64_t>(e) * p.Cout + cg) * p.Cin + c) * 9 + tap);
        }
        s.w[j][ci][tap][co] = v;
    }
}

// Phase: accumulate the chunk (each thread: one pixel, KT slots x COT channels).
template <int KT, int COT>
MF_HD void conv_compute(const ThreadCtx& t, const ConvShared<KT, COT>& s, ConvLocal<KT, COT>& l)
{
    using Tr = ConvTraits<KT, COT>;
    const int ty = t.tid / kTW, tx = t.tid % kTW;
#pragma unroll
    for (int j = 0; j < KT; ++j)
#pragma unroll 1
        for (int ci = 0; ci < Tr::CIC; ++ci)
#pragma unroll
            for (int dy = 0; dy < 3; ++dy)
#pragma unroll
                for (int dx = 0; dx < 3; ++dx)
                {
                    const float v = s.in[j][ci][ty + dy][tx + dx];
#pragma unroll
                    for (int co = 0; co < COT; ++co)
                        l.acc[j][co] += s.w[j][ci][dy * 3 + dx][co] * v;
                }
}

// Phase: bias, log weight, log-sum-exp over the slots, store.
template <int KT, int COT>
MF_HD void conv_store(const ConvParams& p, const ThreadCtx& t, const ConvShared<KT, COT>& s, const ConvLocal<KT, COT>& l)
{
    const BlockPos bp = block_pos(p, t.block);
    const int y = bp.y0 + t.tid / kTW, x = bp.x0 + t.tid % kTW;
    if (y >= p.H || x >= p.W)
        return;
#pragma unroll
    for (int co = 0; co < COT; ++co)
    {
        const int cg = bp.cog * COT + co;
        if (cg >= p.Cout)
            break;
        float a[KT];
#pragma unroll
        for (int j = 0; j < KT; ++j)
        {
            float bias = 0.0f;
            if (j < p.k)
            {
                const int e = s.e[j];
                if (e < 0)
                    bias = NAN;
                else if (p.bias)
                    bias = load_any(p.bias, p.bdtype, static_cast<int64_t>(e) * p.Cout + cg);
            }
            a[j] = l.acc[j][co] + bias + s.logw[j];
        }
        store_any(p.out, p.hdtype, bp.b * p.os[0] + cg * p.os[1] + y * p.os[2] + x * p.os[3], logsumexp_k<KT>(a, p.k));
    }
}

template <int KT, int COT>
__global__ void __launch_bounds__(kThreads) conv_kernel(ConvParams p)
{
    __shared__ ConvShared<KT, COT> s;
    ConvLocal<KT, COT> l;
    const ThreadCtx t = this_thread();
    conv_setup<KT, COT>(p, t, s, l);
    __syncthreads();
    for (int c0 = 0; c0 < p.Cin; c0 += ConvTraits<KT, COT>::CIC)
    {
        conv_load<KT, COT>(p, t, s, c0);
        __syncthreads();
        conv_compute<KT, COT>(t, s, l);
        __syncthreads();
    }
    conv_store<KT, COT>(p, t, s, l);
}

template <int KT, int COT>
int run_conv(const ConvParams& p, cudaStream_t stream, bool host)
{
    const int64_t blocks = static_cast<int64_t>(p.B) * p.cogroups * p.tiles_y * p.tiles_x;
    if (blocks == 0)
        return MOEFUSION_SUCCESS;
    if (!host)
    {
        if (blocks > 0x7fffffff)
            return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "expert_conv3x3_combine: too many blocks");
        conv_kernel<KT, COT><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
        return check_launch("moefusion_expert_conv3x3_combine");
    }
    auto* s = new ConvShared<KT, COT>();
    auto* l = new ConvLocal<KT, COT>[kThreads];
    for (int64_t blk = 0; blk < blocks; ++blk)
    {
        ThreadCtx t{blk, 0, kThreads};
        for (t.tid = 0; t.tid < kThreads; ++t.tid)
            conv_setup<KT, COT>(p, t, *s, l[t.tid]);
        for (int c0 = 0; c0 < p.Cin; c0 += ConvTraits<KT, COT>::CIC)
        {
            for (t.tid = 0; t.tid < kThreads; ++t.tid)
                conv_load<KT, COT>(p, t, *s, c0);
            for (t.tid = 0; t.tid < kThreads; ++t.tid)
                conv_compute<KT, COT>(t, *s, l[t.tid]);
        }
        for (t.tid = 0; t.tid < kThreads; ++t.tid)
            conv_store<KT, COT>(p, t, *s, l[t.tid]);
    }
    delete[] l;
    delete s;
    return MOEFUSION_SUCCESS;
}

// Output channels per block: 1, 4 or as many as fit (KT * COT <= 32 accumulators, COT <= 16).
template <int KT>
int dispatch_cot(ConvParams& p, cudaStream_t stream, bool host)
{
    constexpr int maxcot = 32 / KT < 16 ? 32 / KT : 16;
    if (p.Cout == 1)
    {
        p.cogroups = 1;
        return run_conv<KT, 1>(p, stream, host);
    }
    if (p.Cout <= 4)
    {
        p.cogroups = 1;
        return run_conv<KT, 4>(p, stream, host);
    }
    p.cogroups = (p.Cout + maxcot - 1) / maxcot;
    return run_conv<KT, maxcot>(p, stream, host);
}

int conv_impl(const moefusion_tensor* h, const moefusion_tensor* w, const moefusion_tensor* bias,
    const moefusion_tensor* idx, const moefusion_tensor* gw, const moefusion_tensor* out, cudaStream_t stream,
    bool host)
{
    ConvParams p{};
    p.h = h->data;
    p.hdtype = h->dtype;
    for (int i = 0; i < 5; ++i)
        p.hs[i] = h->stride[i];
    p.chan_fastest = h->stride[2] == 1 && h->stride[4] != 1;
    p.w = w->data;
    p.wdtype = w->dtype;
    p.bias = bias && bias->data ? bias->data : nullptr;
    p.bdtype = p.bias ? bias->dtype : MOEFUSION_FLOAT32;
    p.idx = static_cast<const int32_t*>(idx->data);
    p.is_b = idx->stride[0];
    p.is_j = idx->stride[1];
    p.gw = gw->data;
    p.gwdtype = gw->dtype;
    p.gs_b = gw->stride[0];
    p.gs_j = gw->stride[1];
    p.out = out->data;
    for (int i = 0; i < 4; ++i)
        p.os[i] = out->stride[i];
    p.B = static_cast<int>(h->shape[0]);
    p.k = static_cast<int>(h->shape[1]);
    p.Cin = static_cast<int>(h->shape[2]);
    p.H = static_cast<int>(h->shape[3]);
    p.W = static_cast<int>(h->shape[4]);
    p.E = static_cast<int>(w->shape[0]);
    p.Cout = static_cast<int>(w->shape[1]);
    p.tiles_x = (p.W + kTW - 1) / kTW;
    p.tiles_y = (p.H + kTH - 1) / kTH;
    if (p.k <= 1)
        return dispatch_cot<1>(p, stream, host);
    if (p.k <= 2)
        return dispatch_cot<2>(p, stream, host);
    if (p.k <= 4)
        return dispatch_cot<4>(p, stream, host);
    return dispatch_cot<8>(p, stream, host);
}

int conv_entry(const moefusion_tensor* h, const moefusion_tensor* w, const moefusion_tensor* bias,
    const moefusion_tensor* idx, const moefusion_tensor* gw, const moefusion_tensor* out, cudaStream_t stream,
    bool host)
{
    clear_error();
    int st;
    if ((st = check_tensor(h, "hidden", 5, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(w, "weight", 5, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(bias, "bias", 2, kFloatTypes, true)) != 0)
        return st;
    if ((st = check_tensor(idx, "indices", 2, kInt32, false)) != 0)
        return st;
    if ((st = check_tensor(gw, "weights", 2, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(out, "out", 4, kFloatTypes, false)) != 0)
        return st;
    const int64_t B = h->shape[0], k = h->shape[1], Cin = h->shape[2], H = h->shape[3], W = h->shape[4];
    const int64_t E = w->shape[0], Cout = w->shape[1];
    if (k < 1 || k > MOEFUSION_MAX_K)
        return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "hidden: k = %lld outside 1..%d", (long long) k, MOEFUSION_MAX_K);
    if (Cin < 1 || Cout < 1 || E < 1)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "weight: E, Cout and Cin must be >= 1");
    if (Cout > 64)
        return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "weight: Cout = %lld > 64 (use a library convolution)",
            (long long) Cout);
    if (w->shape[2] != Cin || w->shape[3] != 3 || w->shape[4] != 3)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "weight: expected [E, Cout, %lld, 3, 3]", (long long) Cin);
    if (!is_contiguous(w))
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "weight: must be contiguous");
    if (bias && bias->data && (bias->shape[0] != E || bias->shape[1] != Cout || !is_contiguous(bias)))
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "bias: expected contiguous [%lld, %lld]", (long long) E,
            (long long) Cout);
    if (idx->shape[0] != B || idx->shape[1] != k || gw->shape[0] != B || gw->shape[1] != k)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "indices/weights: expected shape [%lld, %lld]", (long long) B,
            (long long) k);
    if (out->shape[0] != B || out->shape[1] != Cout || out->shape[2] != H || out->shape[3] != W)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "out: expected shape [%lld, %lld, %lld, %lld]", (long long) B,
            (long long) Cout, (long long) H, (long long) W);
    if (out->dtype != h->dtype)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "out: dtype differs from hidden's");
    if (B > 0x7fffffff || H > 0x7fffffff || W > 0x7fffffff)
        return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "hidden: sizes beyond 2^31");
    return conv_impl(h, w, bias, idx, gw, out, stream, host);
}

} // namespace
} // namespace mf

extern "C" {

MOEFUSION_API int moefusion_expert_conv3x3_combine(const moefusion_tensor* hidden, const moefusion_tensor* weight,
    const moefusion_tensor* bias, const moefusion_tensor* indices, const moefusion_tensor* weights,
    const moefusion_tensor* out, moefusion_stream_t stream)
{
    return mf::conv_entry(hidden, weight, bias, indices, weights, out, reinterpret_cast<cudaStream_t>(stream), false);
}

MOEFUSION_API int moefusion_host_expert_conv3x3_combine(const moefusion_tensor* hidden,
    const moefusion_tensor* weight, const moefusion_tensor* bias, const moefusion_tensor* indices,
    const moefusion_tensor* weights, const moefusion_tensor* out)
{
    return mf::conv_entry(hidden, weight, bias, indices, weights, out, nullptr, true);
}

} // extern "C"
