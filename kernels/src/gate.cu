// gate: bilinear resize of the features to the gate grid (align_corners=True), dot with w_gate, top-k,
// softmax; one launch, no host synchronisation.
//
// Block (b, channel group g, grid tile t) handles grid points t*256 .. t*256+255 and channels
// g*16 .. g*16+15 of sample b: each thread owns one grid point, interpolates its 16 channels and
// accumulates their products with w_gate's rows (consecutive threads read consecutive rows: coalesced).
// A shared-memory tree reduction gives the block's partial logits, written to the workspace. The block
// that takes the last ticket of sample b (atomicInc wraps the counter back to 0) sums the partials in
// block order (deterministic), picks the top k and writes the softmax weights.
#include "common.cuh"

namespace mf {

namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerBlock = 16;
constexpr size_t kAlign = 256;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

int64_t blocks_per_sample(int64_t channels, int64_t grid_points)
{
    return ((grid_points + kThreads - 1) / kThreads) * ((channels + kChannelsPerBlock - 1) / kChannelsPerBlock);
}

struct GateParams
{
    const void* x; // [B, C, H, W]
    int xdtype;
    const void* w; // [C*gh*gw, E]
    int wdtype;
    int32_t* idx; // [B, k]
    void* wts;    // [B, k]
    int wts_dtype;
    int64_t is_b, is_j, ws_b, ws_j;
    int64_t B, C, H, W;
    int64_t xs[4];
    int gh, gw, E, k;
    float sy, sx;
    int64_t tiles, bps; // grid tiles per channel group; blocks per sample
    unsigned* counters; // [B]
    float* partials;    // [B, bps, E]
};

template <int MAXE>
struct GateShared
{
    float red[MAXE][kThreads];
    float logits[MAXE];
    int last;
};

// Phase 1 (all threads): interpolate this thread's grid point for the block's channels; accumulate.
template <int MAXE>
MF_HD void gate_accumulate(const GateParams& p, const ThreadCtx& t, GateShared<MAXE>& s)
{
    const int64_t b = t.block / p.bps;
    const int64_t r = t.block - b * p.bps;
    const int64_t g = r / p.tiles;
    const int64_t tile = r - g * p.tiles;
    const int64_t ghw = static_cast<int64_t>(p.gh) * p.gw;
    const int64_t pt = tile * kThreads + t.tid;

    float acc[MAXE];
#pragma unroll
    for (int e = 0; e < MAXE; ++e)
        acc[e] = 0.0f;

    if (pt < ghw)
    {
        const int i = static_cast<int>(pt / p.gw);
        const int j = static_cast<int>(pt - static_cast<int64_t>(i) * p.gw);
        // torch's upsample_bilinear2d, align_corners=True: src = scale * dst, scale = (in-1)/(out-1).
        const float fy = p.sy * static_cast<float>(i);
        const float fx = p.sx * static_cast<float>(j);
        int64_t y0 = static_cast<int64_t>(fy);
        int64_t x0 = static_cast<int64_t>(fx);
        y0 = y0 < p.H - 1 ? y0 : p.H - 1;
        x0 = x0 < p.W - 1 ? x0 : p.W - 1;
        const int64_t y1 = y0 + (y0 < p.H - 1 ? 1 : 0);
        const int64_t x1 = x0 + (x0 < p.W - 1 ? 1 : 0);
        const float ly1 = fy - static_cast<float>(y0), ly0 = 1.0f - ly1;
        const float lx1 = fx - static_cast<float>(x0), lx0 = 1.0f - lx1;
        const int64_t o00 = y0 * p.xs[2] + x0 * p.xs[3];
        const int64_t o01 = y0 * p.xs[2] + x1 * p.xs[3];
        const int64_t o10 = y1 * p.xs[2] + x0 * p.xs[3];
        const int64_t o11 = y1 * p.xs[2] + x1 * p.xs[3];

        const int64_t c0 = g * kChannelsPerBlock;
        const int64_t c1 = c0 + kChannelsPerBlock < p.C ? c0 + kChannelsPerBlock : p.C;
        for (int64_t c = c0; c < c1; ++c)
        {
            const int64_t xc = b * p.xs[0] + c * p.xs[1];
            const float v = ly0 * (lx0 * load_any(p.x, p.xdtype, xc + o00) + lx1 * load_any(p.x, p.xdtype, xc + o01))
                + ly1 * (lx0 * load_any(p.x, p.xdtype, xc + o10) + lx1 * load_any(p.x, p.xdtype, xc + o11));
            const int64_t wrow = (c * ghw + pt) * p.E;
#pragma unroll
            for (int e = 0; e < MAXE; ++e)
                if (e < p.E)
                    acc[e] += v * load_any(p.w, p.wdtype, wrow + e);
        }
    }
#pragma unroll
    for (int e = 0; e < MAXE; ++e)
        s.red[e][t.tid] = acc[e];
}

// Phase 2 (repeated for stride = 128, 64, ..., 1): tree reduction in shared memory.
template <int MAXE>
MF_HD void gate_reduce_step(int E, const ThreadCtx& t, GateShared<MAXE>& s, int stride)
{
    if (t.tid < stride)
    {
#pragma unroll
        for (int e = 0; e < MAXE; ++e)
            if (e < E)
                s.red[e][t.tid] += s.red[e][t.tid + stride];
    }
}

// Phase 3 (thread 0): publish the block's partial logits, take a ticket.
template <int MAXE>
MF_HD void gate_publish(const GateParams& p, const ThreadCtx& t, GateShared<MAXE>& s)
{
    if (t.tid != 0)
        return;
    const int64_t b = t.block / p.bps;
    const int64_t r = t.block - b * p.bps;
    float* dst = p.partials + (b * p.bps + r) * p.E;
    for (int e = 0; e < p.E; ++e)
        dst[e] = s.red[e][0];
    thread_fence(); // partials visible device-wide before the ticket
    const unsigned old = ticket(p.counters + b, static_cast<unsigned>(p.bps - 1));
    s.last = old == static_cast<unsigned>(p.bps - 1);
}

// Phase 4 (last block of a sample, threads < E): sum the partial logits in block order.
template <int MAXE>
MF_HD void gate_sum(const GateParams& p, const ThreadCtx& t, GateShared<MAXE>& s)
{
    thread_fence();
    if (t.tid >= p.E)
        return;
    const int64_t b = t.block / p.bps;
    const float* src = p.partials + b * p.bps * p.E + t.tid;
    float sum = 0.0f;
    for (int64_t r = 0; r < p.bps; ++r)
        sum += load_cg(src + r * p.E);
    s.logits[t.tid] = sum;
}

MF_HD bool gate_greater(float a, float b) { return a > b || (is_nan(a) && !is_nan(b)); }

// Phase 5 (last block, thread 0): top-k (ties: lower index first; NaN largest) and softmax.
template <int MAXE>
MF_HD void gate_finalize(const GateParams& p, const ThreadCtx& t, GateShared<MAXE>& s)
{
    if (t.tid != 0)
        return;
    const int64_t b = t.block / p.bps;
    unsigned chosen = 0u;
    float top0 = 0.0f, sum = 0.0f;
    // First pass: pick the experts, remember them in s.red (free now) for the second pass.
    for (int slot = 0; slot < p.k; ++slot)
    {
        int best = -1;
        for (int e = 0; e < p.E; ++e)
        {
            if (chosen & (1u << e))
                continue;
            if (best < 0 || gate_greater(s.logits[e], s.logits[best]))
                best = e;
        }
        chosen |= 1u << best;
        const float v = s.logits[best];
        if (slot == 0)
            top0 = v;
        const float ex = expf(v - top0);
        sum += ex;
        s.red[0][slot] = ex;
        p.idx[b * p.is_b + slot * p.is_j] = best;
    }
    for (int slot = 0; slot < p.k; ++slot)
        store_any(p.wts, p.wts_dtype, b * p.ws_b + slot * p.ws_j, s.red[0][slot] / sum);
}

template <int MAXE>
__global__ void __launch_bounds__(kThreads) gate_kernel(GateParams p)
{
    __shared__ GateShared<MAXE> s;
    const ThreadCtx t = this_thread();
    gate_accumulate<MAXE>(p, t, s);
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1)
    {
        gate_reduce_step<MAXE>(p.E, t, s, stride);
        __syncthreads();
    }
    gate_publish<MAXE>(p, t, s);
    __syncthreads();
    if (s.last)
    {
        gate_sum<MAXE>(p, t, s);
        __syncthreads();
        gate_finalize<MAXE>(p, t, s);
    }
}

template <int MAXE>
int run_gate(const GateParams& p, cudaStream_t stream, bool host)
{
    const int64_t blocks = p.B * p.bps;
    if (!host)
    {
        if (blocks > 0x7fffffff)
            return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "moefusion_gate: too many blocks (%lld)", (long long) blocks);
        gate_kernel<MAXE><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
        return check_launch("moefusion_gate");
    }
    auto* s = new GateShared<MAXE>();
    for (int64_t blk = 0; blk < blocks; ++blk)
    {
        ThreadCtx t{blk, 0, kThreads};
        for (t.tid = 0; t.tid < kThreads; ++t.tid)
            gate_accumulate<MAXE>(p, t, *s);
        for (int stride = kThreads / 2; stride > 0; stride >>= 1)
            for (t.tid = 0; t.tid < kThreads; ++t.tid)
                gate_reduce_step<MAXE>(p.E, t, *s, stride);
        for (t.tid = 0; t.tid < kThreads; ++t.tid)
            gate_publish<MAXE>(p, t, *s);
        if (s->last)
        {
            for (t.tid = 0; t.tid < kThreads; ++t.tid)
                gate_sum<MAXE>(p, t, *s);
            for (t.tid = 0; t.tid < kThreads; ++t.tid)
                gate_finalize<MAXE>(p, t, *s);
        }
    }
    delete s;
    return MOEFUSION_SUCCESS;
}

int gate_dispatch(GateParams& p, cudaStream_t stream, bool host)
{
    if (p.E <= 4)
        return run_gate<4>(p, stream, host);
    return run_gate<32>(p, stream, host);
}

int gate_impl(const moefusion_tensor* f, const moefusion_tensor* w, int gh, int gw, int k,
    const moefusion_tensor* idx, const moefusion_tensor* wts, void* ws, cudaStream_t stream, bool host)
{
    GateParams p{};
    p.x = f->data;
    p.xdtype = f->dtype;
    p.w = w->data;
    p.wdtype = w->dtype;
    p.idx = static_cast<int32_t*>(idx->data);
    p.wts = wts->data;
    p.wts_dtype = wts->dtype;
    p.is_b = idx->stride[0];
    p.is_j = idx->stride[1];
    p.ws_b = wts->stride[0];
    p.ws_j = wts->stride[1];
    p.B = f->shape[0];
    p.C = f->shape[1];
    p.H = f->shape[2];
    p.W = f->shape[3];
    for (int i = 0; i < 4; ++i)
        p.xs[i] = f->stride[i];
    p.gh = gh;
    p.gw = gw;
    p.E = static_cast<int>(w->shape[1]);
    p.k = k;
    p.sy = gh > 1 ? static_cast<float>(p.H - 1) / static_cast<float>(gh - 1) : 0.0f;
    p.sx = gw > 1 ? static_cast<float>(p.W - 1) / static_cast<float>(gw - 1) : 0.0f;
    const int64_t ghw = static_cast<int64_t>(gh) * gw;
    p.tiles = (ghw + kThreads - 1) / kThreads;
    p.bps = blocks_per_sample(p.C, ghw);
    p.counters = static_cast<unsigned*>(ws);
    p.partials = reinterpret_cast<float*>(static_cast<char*>(ws) + align_up(sizeof(unsigned) * p.B));
    return gate_dispatch(p, stream, host);
}

int gate_workspace(int64_t B, int64_t C, int gh, int gw, int E, size_t* bytes)
{
    if (B < 0 || C < 1 || gh < 1 || gw < 1 || E < 1 || bytes == nullptr)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "moefusion_gate_workspace_size: invalid arguments");
    const int64_t bps = blocks_per_sample(C, static_cast<int64_t>(gh) * gw);
    *bytes = align_up(sizeof(unsigned) * static_cast<size_t>(B))
        + align_up(sizeof(float) * static_cast<size_t>(B) * static_cast<size_t>(bps) * static_cast<size_t>(E));
    return MOEFUSION_SUCCESS;
}

int gate_entry(const moefusion_tensor* f, const moefusion_tensor* w, int gh, int gw, int k,
    const moefusion_tensor* idx, const moefusion_tensor* wts, void* ws, size_t ws_bytes, unsigned flags,
    cudaStream_t stream, bool host)
{
    clear_error();
    int st;
    if ((st = check_tensor(f, "features", 4, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(w, "w_gate", 2, kFloatTypes, false)) != 0)
        return st;
    if ((st = check_tensor(idx, "indices", 2, kInt32, false)) != 0)
        return st;
    if ((st = check_tensor(wts, "weights", 2, kFloatTypes, false)) != 0)
        return st;
    const int64_t B = f->shape[0], C = f->shape[1];
    if (gh < 1 || gw < 1)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "grid %dx%d: both sizes must be >= 1", gh, gw);
    if (f->shape[2] < 1 || f->shape[3] < 1 || C < 1)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "features: C, H and W must be >= 1");
    const int64_t E = w->shape[1];
    if (E < 1 || E > MOEFUSION_MAX_EXPERTS)
        return fail(MOEFUSION_ERROR_NOT_SUPPORTED, "w_gate: %lld experts, this build supports 1..%d", (long long) E,
            MOEFUSION_MAX_EXPERTS);
    if (w->shape[0] != C * gh * gw)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "w_gate: %lld rows, expected C*grid_h*grid_w = %lld",
            (long long) w->shape[0], (long long) (C * gh * gw));
    if (!is_contiguous(w))
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "w_gate: must be contiguous");
    if (k < 1 || k > E)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "k = %d outside 1..E (%lld)", k, (long long) E);
    if (idx->shape[0] != B || idx->shape[1] != k || wts->shape[0] != B || wts->shape[1] != k)
        return fail(MOEFUSION_ERROR_INVALID_VALUE, "indices/weights: expected shape [%lld, %d]", (long long) B, k);
    size_t need = 0;
    if ((st = gate_workspace(B, C, gh, gw, static_cast<int>(E), &need)) != 0)
        return st;
    if (B == 0)
        return MOEFUSION_SUCCESS;
    if (ws == nullptr || ws_bytes < need)
        return fail(MOEFUSION_ERROR_WORKSPACE, "workspace: %zu bytes given, %zu needed", ws_bytes, need);
    if (reinterpret_cast<uintptr_t>(ws) % kAlign != 0)
        return fail(MOEFUSION_ERROR_WORKSPACE, "workspace: must be aligned to %zu bytes", kAlign);
    if (flags & MOEFUSION_GATE_CLEAR_WORKSPACE)
    {
        const size_t counter_bytes = sizeof(unsigned) * static_cast<size_t>(B);
        if (host)
            std::memset(ws, 0, counter_bytes);
        else
        {
            cudaError_t err = cudaMemsetAsync(ws, 0, counter_bytes, stream);
            if (err != cudaSuccess)
                return fail(MOEFUSION_ERROR_CUDA, "moefusion_gate: cudaMemsetAsync: %s", cudaGetErrorName(err));
        }
    }
    return gate_impl(f, w, gh, gw, k, idx, wts, ws, stream, host);
}

} // namespace
} // namespace mf

extern "C" {

MOEFUSION_API int moefusion_gate_workspace_size(
    int64_t batch, int64_t channels, int32_t grid_h, int32_t grid_w, int32_t num_experts, size_t* bytes)
{
    mf::clear_error();
    return mf::gate_workspace(batch, channels, grid_h, grid_w, num_experts, bytes);
}

MOEFUSION_API int moefusion_gate(const moefusion_tensor* features, const moefusion_tensor* w_gate, int32_t grid_h,
    int32_t grid_w, int32_t k, const moefusion_tensor* indices, const moefusion_tensor* weights, void* workspace,
    size_t workspace_bytes, uint32_t flags, moefusion_stream_t stream)
{
    return mf::gate_entry(features, w_gate, grid_h, grid_w, k, indices, weights, workspace, workspace_bytes, flags,
        reinterpret_cast<cudaStream_t>(stream), false);
}

MOEFUSION_API int moefusion_host_gate(const moefusion_tensor* features, const moefusion_tensor* w_gate,
    int32_t grid_h, int32_t grid_w, int32_t k, const moefusion_tensor* indices, const moefusion_tensor* weights,
    void* workspace, size_t workspace_bytes, uint32_t flags)
{
    return mf::gate_entry(features, w_gate, grid_h, grid_w, k, indices, weights, workspace, workspace_bytes, flags,
        nullptr, true);
}

} // extern "C"
