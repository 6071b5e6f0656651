/*
 * moefusion_kernels.h: the C ABI of libmoefusion_kernels.so (MoE-Fusion Edge gated-expert dispatch).
 *
 * Small on purpose. Every kernel entry point:
 *   - takes its tensors as `moefusion_tensor` descriptors (pointer, dtype, shape, strides in elements),
 *   - takes the CUDA stream it enqueues on (a `cudaStream_t`; the typedef below is the same type),
 *   - enqueues exactly ONE kernel launch (moefusion_gate with MOEFUSION_GATE_CLEAR_WORKSPACE adds one
 *     cudaMemsetAsync), never synchronises the host and never allocates,
 *   - returns a moefusion_status; on failure moefusion_last_error() gives a one-line message for the
 *     calling thread. Nothing is thrown across the ABI.
 *
 * The math of each kernel is the PyTorch reference in moefusion/model/gating.py and
 * moefusion/kernels/reference.py. Arithmetic is float32 inside every kernel, whatever the storage type.
 *
 * For every kernel there is also a `moefusion_host_*` twin with the same arguments minus the stream,
 * taking HOST pointers: it runs the very same kernel code on the CPU, one simulated thread block at a
 * time (phases separated where the GPU has __syncthreads). It is slow and exists so that the index
 * math, tiling and reductions can be tested on machines without a GPU.
 *
 * Thread safety: all functions are reentrant; the gate's workspace must not be shared by launches that
 * may run concurrently.
 */
#ifndef MOEFUSION_KERNELS_H
#define MOEFUSION_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MOEFUSION_API __declspec(dllexport)
#else
#define MOEFUSION_API __attribute__((visibility("default")))
#endif

/* Same type as cudaStream_t (driver_types.h: typedef struct CUstream_st *cudaStream_t). */
struct CUstream_st;
typedef struct CUstream_st* moefusion_stream_t;

/* ABI version: bumped on any incompatible change of a signature, struct or semantics below. */
#define MOEFUSION_KERNELS_ABI_VERSION 1

typedef enum moefusion_status {
    MOEFUSION_SUCCESS = 0,
    MOEFUSION_ERROR_INVALID_VALUE = 1, /* a shape, dtype, stride or pointer does not fit the contract */
    MOEFUSION_ERROR_NOT_SUPPORTED = 2, /* valid, but outside what this build implements (e.g. E > 32) */
    MOEFUSION_ERROR_WORKSPACE = 3,     /* workspace missing, too small or misaligned */
    MOEFUSION_ERROR_CUDA = 4           /* the CUDA runtime reported an error (message has its name) */
} moefusion_status;

typedef enum moefusion_dtype {
    MOEFUSION_FLOAT32 = 0,
    MOEFUSION_FLOAT16 = 1,
    MOEFUSION_INT32 = 2
} moefusion_dtype;

#define MOEFUSION_MAX_DIMS 5

/* A strided view of device (or, for moefusion_host_*, host) memory. Strides are in ELEMENTS and may be
 * any non-negative values (NCHW, channels-last, channel slices of a larger tensor, ...). A NULL `data`
 * marks an optional tensor as absent. Unused trailing shape/stride entries are ignored. */
typedef struct moefusion_tensor {
    void* data;
    int32_t dtype; /* moefusion_dtype */
    int32_t ndim;
    int64_t shape[MOEFUSION_MAX_DIMS];
    int64_t stride[MOEFUSION_MAX_DIMS];
} moefusion_tensor;

/* Limits of this build. */
#define MOEFUSION_MAX_EXPERTS 32 /* E */
#define MOEFUSION_MAX_K 8        /* k of the combine and expert-conv kernels (gate: k <= E) */

/* ---------------------------------------------------------------- library information */
MOEFUSION_API int moefusion_abi_version(void);
/* e.g. "moefusion_kernels 0.1 abi 1; CUDA 13.0; archs 87;90 (+PTX 90)" */
MOEFUSION_API const char* moefusion_build_info(void);
MOEFUSION_API const char* moefusion_status_name(int status);
/* Message of the last failure on this thread ("" if none). Valid until the next call on this thread. */
MOEFUSION_API const char* moefusion_last_error(void);

/* ---------------------------------------------------------------- gate
 * descriptor = bilinear_resize(features, (grid_h, grid_w), align_corners=True).flatten(1)  [B, C*gh*gw]
 * logits     = descriptor @ w_gate                                                           [B, E]
 * indices    = topk(logits, k) (sorted descending; ties: lower expert index first; NaN counts as largest)
 * weights    = softmax(logits[indices])
 *
 * features: [B, C, H, W] float32/float16, any strides.   w_gate: [C*gh*gw, E] float32/float16, contiguous.
 * indices:  [B, k] int32 (output).                        weights: [B, k] float32/float16 (output).
 * 1 <= k <= E <= MOEFUSION_MAX_EXPERTS; H, W, grid_h, grid_w >= 1.
 *
 * One launch: thread blocks each reduce a slice of the descriptor, the last block of each sample (found
 * with an atomic ticket) sums the partial logits in a fixed order (deterministic) and does top-k and
 * softmax. The workspace (see moefusion_gate_workspace_size) holds the partial sums and one ticket
 * counter per sample. The counters must be zero before the first call; every launch leaves them zero
 * again, so a caller that keeps its workspace (a PyTorch op) zeroes it once. A caller whose workspace is
 * not preserved between calls (TensorRT) passes MOEFUSION_GATE_CLEAR_WORKSPACE: the counters are then
 * cleared with cudaMemsetAsync on `stream` before the launch. Workspace alignment: 256 bytes. */
#define MOEFUSION_GATE_CLEAR_WORKSPACE 1u

MOEFUSION_API int moefusion_gate_workspace_size(
    int64_t batch, int64_t channels, int32_t grid_h, int32_t grid_w, int32_t num_experts, size_t* bytes);

MOEFUSION_API int moefusion_gate(const moefusion_tensor* features, const moefusion_tensor* w_gate, int32_t grid_h,
    int32_t grid_w, int32_t k, const moefusion_tensor* indices, const moefusion_tensor* weights, void* workspace,
    size_t workspace_bytes, uint32_t flags, moefusion_stream_t stream);

/* ---------------------------------------------------------------- attention split
 * fg = cat(x0 * att, x1 * att, dim=1)            [B, 2C, H, W]
 * bg = cat(x0 * (1 - att), x1 * (1 - att), dim=1)
 * x0, x1: [B, C, H, W]; att: [B, 1, H, W]; all float32 or all float16 (outputs too); any strides.
 * Either output may be absent (data == NULL). Outputs must not overlap the inputs. */
MOEFUSION_API int moefusion_attention_split(const moefusion_tensor* x0, const moefusion_tensor* x1,
    const moefusion_tensor* att, const moefusion_tensor* fg, const moefusion_tensor* bg, moefusion_stream_t stream);

/* ---------------------------------------------------------------- combine
 * out[b] = log(sum_j weights[b, j] * exp(expert_outputs[b, j]))  computed as logsumexp_j(y_j + log w_j)
 * expert_outputs: [B, k, C, H, W] float32/float16, any strides; weights: [B, k] float32/float16 (> 0);
 * out: [B, C, H, W], same dtype as expert_outputs, any strides (e.g. a channel slice of a larger tensor).
 * 1 <= k <= MOEFUSION_MAX_K. NaN propagates; all -inf gives -inf. */
MOEFUSION_API int moefusion_combine(const moefusion_tensor* expert_outputs, const moefusion_tensor* weights,
    const moefusion_tensor* out, moefusion_stream_t stream);

/* ---------------------------------------------------------------- last expert layer + combine
 * For the k experts chosen per sample, the last 3x3 convolution (zero padding 1, stride 1, no activation)
 * fused with the combine:
 *   y_j    = conv3x3(hidden[b, j], weight[indices[b, j]]) + bias[indices[b, j]]
 *   out[b] = logsumexp_j(y_j + log weights[b, j])
 * hidden:  [B, k, Cin, H, W] float32/float16, any strides (the k chosen experts' last hidden activations)
 * weight:  [E, Cout, Cin, 3, 3] float32/float16, contiguous;  bias: [E, Cout] (or absent)
 * indices: [B, k] int32 in [0, E) (an index outside gives NaN for that sample, never a memory fault)
 * weights: [B, k] float32/float16;  out: [B, Cout, H, W], dtype of hidden, any strides.
 * 1 <= k <= MOEFUSION_MAX_K; Cout <= 64; Cin >= 1. CUDA-core direct convolution (no tensor cores):
 * meant for thin layers (MoGE 16->1, MoLE 8->16), where library convolutions are inefficient. */
MOEFUSION_API int moefusion_expert_conv3x3_combine(const moefusion_tensor* hidden, const moefusion_tensor* weight,
    const moefusion_tensor* bias, const moefusion_tensor* indices, const moefusion_tensor* weights,
    const moefusion_tensor* out, moefusion_stream_t stream);

/* ---------------------------------------------------------------- CPU twins (tests; host pointers) */
MOEFUSION_API int moefusion_host_gate(const moefusion_tensor* features, const moefusion_tensor* w_gate,
    int32_t grid_h, int32_t grid_w, int32_t k, const moefusion_tensor* indices, const moefusion_tensor* weights,
    void* workspace, size_t workspace_bytes, uint32_t flags);
MOEFUSION_API int moefusion_host_attention_split(const moefusion_tensor* x0, const moefusion_tensor* x1,
    const moefusion_tensor* att, const moefusion_tensor* fg, const moefusion_tensor* bg);
MOEFUSION_API int moefusion_host_combine(
    const moefusion_tensor* expert_outputs, const moefusion_tensor* weights, const moefusion_tensor* out);
MOEFUSION_API int moefusion_host_expert_conv3x3_combine(const moefusion_tensor* hidden,
    const moefusion_tensor* weight, const moefusion_tensor* bias, const moefusion_tensor* indices,
    const moefusion_tensor* weights, const moefusion_tensor* out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEFUSION_KERNELS_H */
