// moefusion_kernels_selftest: every kernel of libmoefusion_kernels.so on the GPU against its CPU twin
// (the same kernel code run block by block on the host), on random data at odd sizes, NCHW and
// channels-last, float32 and float16, with outputs poisoned beforehand (all bytes 0xFF: NaN / -1) so that
// an element the GPU did not write fails the comparison. Needs no PyTorch: run it on a Jetson after
// building, and under compute-sanitizer (memcheck, racecheck, synccheck).
//
// Usage: moefusion_kernels_selftest [--quick]   (--quick: one case per kernel and dtype, for racecheck)
// Exit status: 0 all passed, 1 a mismatch or error, 77 no CUDA device (skip).
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "moefusion_kernels.h"

namespace
{

int gFailures = 0;

#define CUDA_OK(call)                                                                                          \
    do                                                                                                         \
    {                                                                                                          \
        cudaError_t e_ = (call);                                                                               \
        if (e_ != cudaSuccess)                                                                                 \
        {                                                                                                      \
            std::printf("FAIL %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));            \
            std::exit(1);                                                                                      \
        }                                                                                                      \
    } while (0)

uint64_t gRng = 0x9E3779B97F4A7C15ull;
float uniform() // [0, 1)
{
    gRng ^= gRng << 13;
    gRng ^= gRng >> 7;
    gRng ^= gRng << 17;
    return static_cast<float>((gRng >> 40) & 0xFFFFFF) / 16777216.0f;
}
float normal() { return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7f; }

size_t esize(int dtype) { return dtype == MOEFUSION_FLOAT16 ? 2 : 4; }

// A tensor held twice: host (for the CPU twin) and device (for the kernel).
struct Tensor
{
    moefusion_tensor host{}, dev{};
    std::vector<unsigned char> h;
    void* d = nullptr;
    size_t bytes = 0;

    Tensor(int dtype, std::vector<int64_t> shape, bool channels_last = false)
    {
        const int nd = static_cast<int>(shape.size());
        std::vector<int64_t> stride(nd);
        int64_t n = 1;
        if (channels_last && nd >= 4)
        {
            // dims ... C (at nd-3), H, W: C innermost, then W, H, outer dims
            const int c = nd - 3;
            stride[c] = 1;
            stride[nd - 1] = shape[c];
            stride[nd - 2] = shape[c] * shape[nd - 1];
            n = shape[c] * shape[nd - 1] * shape[nd - 2];
            for (int i = c - 1; i >= 0; --i)
            {
                stride[i] = n;
                n *= shape[i];
            }
        }
        else
        {
            for (int i = nd - 1; i >= 0; --i)
            {
                stride[i] = n;
                n *= shape[i];
            }
        }
        bytes = static_cast<size_t>(n) * esize(dtype);
        h.assign(bytes ? bytes : 1, 0);
        CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
        for (moefusion_tensor* t : {&host, &dev})
        {
            t->dtype = dtype;
            t->ndim = nd;
            for (int i = 0; i < nd; ++i)
            {
                t->shape[i] = shape[i];
                t->stride[i] = stride[i];
            }
        }
        host.data = h.data();
        dev.data = d;
    }
    ~Tensor() { cudaFree(d); }
    Tensor(Tensor const&) = delete;

    size_t count() const { return bytes / esize(host.dtype); }
    void set(size_t i, float v)
    {
        if (host.dtype == MOEFUSION_FLOAT16)
            reinterpret_cast<__half*>(h.data())[i] = __float2half(v);
        else if (host.dtype == MOEFUSION_INT32)
            reinterpret_cast<int32_t*>(h.data())[i] = static_cast<int32_t>(v);
        else
            reinterpret_cast<float*>(h.data())[i] = v;
    }
    float get(std::vector<unsigned char> const& buf, size_t i) const
    {
        if (host.dtype == MOEFUSION_FLOAT16)
            return __half2float(reinterpret_cast<__half const*>(buf.data())[i]);
        if (host.dtype == MOEFUSION_INT32)
            return static_cast<float>(reinterpret_cast<int32_t const*>(buf.data())[i]);
        return reinterpret_cast<float const*>(buf.data())[i];
    }
    void randomize(float scale = 1.0f, float offset = 0.0f)
    {
        for (size_t i = 0; i < count(); ++i)
            set(i, offset + scale * normal());
    }
    void upload() { CUDA_OK(cudaMemcpy(d, h.data(), bytes, cudaMemcpyHostToDevice)); }
    void poison()
    {
        std::memset(h.data(), 0xFF, h.size());
        CUDA_OK(cudaMemset(d, 0xFF, bytes));
    }
    std::vector<unsigned char> download() const
    {
        std::vector<unsigned char> out(bytes);
        CUDA_OK(cudaMemcpy(out.data(), d, bytes, cudaMemcpyDeviceToHost));
        return out;
    }
};

// Compare the GPU result with the CPU twin's, element by element (NaN never passes).
void compare(char const* name, std::string const& cse, Tensor const& t, float rtol)
{
    std::vector<unsigned char> gpu = t.download();
    double worst = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < t.count(); ++i)
    {
        const float a = t.get(gpu, i), b = t.get(t.h, i);
        const double err = std::fabs(static_cast<double>(a) - b) / std::fmax(1.0, std::fabs(static_cast<double>(b)));
        if (!(err <= rtol))
        {
            if (bad < 3)
                std::printf("    %s[%zu]: gpu %g cpu %g\n", name, i, a, b);
            ++bad;
        }
        if (err > worst)
            worst = err;
    }
    std::printf("%s %-22s %-44s max err %.2e\n", bad ? "FAIL" : "ok  ", name, cse.c_str(), worst);
    if (bad)
        ++gFailures;
}

void status(int st, char const* what)
{
    if (st != MOEFUSION_SUCCESS)
    {
        std::printf("FAIL %s: %s: %s\n", what, moefusion_status_name(st), moefusion_last_error());
        ++gFailures;
    }
}

float tol(int dtype) { return dtype == MOEFUSION_FLOAT16 ? 2e-3f : 1e-5f; }

void testGate(int64_t B, int64_t C, int64_t H, int64_t W, int gh, int gw, int E, int k, int dtype, bool cl)
{
    char cse[128];
    std::snprintf(cse, sizeof(cse), "B%lld C%lld %lldx%lld grid %dx%d E%d k%d %s%s", (long long) B, (long long) C,
        (long long) H, (long long) W, gh, gw, E, k, dtype == MOEFUSION_FLOAT16 ? "f16" : "f32", cl ? " cl" : "");
    Tensor f(dtype, {B, C, H, W}, cl), w(MOEFUSION_FLOAT32, {C * gh * gw, E});
    Tensor idx(MOEFUSION_INT32, {B, k}), wts(MOEFUSION_FLOAT32, {B, k});
    f.randomize();
    w.randomize(0.05f);
    f.upload();
    w.upload();
    size_t bytes = 0;
    status(moefusion_gate_workspace_size(B, C, gh, gw, E, &bytes), "gate_workspace_size");
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, bytes));
    CUDA_OK(cudaMemset(ws, 0, bytes));
    std::vector<unsigned char> hws(bytes + 256);
    void* hwsp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(hws.data()) + 255) / 256 * 256);
    // three launches on one workspace without clearing it: the ticket counters must reset themselves
    for (int rep = 0; rep < 3; ++rep)
    {
        idx.poison();
        wts.poison();
        status(moefusion_gate(&f.dev, &w.dev, gh, gw, k, &idx.dev, &wts.dev, ws, bytes, 0, nullptr), "gate");
        CUDA_OK(cudaDeviceSynchronize());
    }
    status(moefusion_host_gate(&f.host, &w.host, gh, gw, k, &idx.host, &wts.host, hwsp, bytes,
               MOEFUSION_GATE_CLEAR_WORKSPACE),
        "host_gate");
    compare("gate.indices", cse, idx, 0.0f);
    compare("gate.weights", cse, wts, 1e-5f);
    CUDA_OK(cudaFree(ws));
}

void testSplit(int64_t B, int64_t C, int64_t H, int64_t W, int dtype, bool cl)
{
    char cse[128];
    std::snprintf(cse, sizeof(cse), "B%lld C%lld %lldx%lld %s%s", (long long) B, (long long) C, (long long) H,
        (long long) W, dtype == MOEFUSION_FLOAT16 ? "f16" : "f32", cl ? " cl" : "");
    Tensor x0(dtype, {B, C, H, W}, cl), x1(dtype, {B, C, H, W}, cl), a(dtype, {B, 1, H, W}, cl);
    Tensor fg(dtype, {B, 2 * C, H, W}, cl), bg(dtype, {B, 2 * C, H, W}, cl);
    x0.randomize();
    x1.randomize();
    for (size_t i = 0; i < a.count(); ++i)
        a.set(i, uniform());
    x0.upload();
    x1.upload();
    a.upload();
    fg.poison();
    bg.poison();
    status(moefusion_attention_split(&x0.dev, &x1.dev, &a.dev, &fg.dev, &bg.dev, nullptr), "attention_split");
    status(moefusion_host_attention_split(&x0.host, &x1.host, &a.host, &fg.host, &bg.host), "host_attention_split");
    CUDA_OK(cudaDeviceSynchronize());
    compare("attention_split.fg", cse, fg, tol(dtype));
    compare("attention_split.bg", cse, bg, tol(dtype));
}

void testCombine(int64_t B, int64_t k, int64_t C, int64_t H, int64_t W, int dtype, bool cl)
{
    char cse[128];
    std::snprintf(cse, sizeof(cse), "B%lld k%lld C%lld %lldx%lld %s%s", (long long) B, (long long) k, (long long) C,
        (long long) H, (long long) W, dtype == MOEFUSION_FLOAT16 ? "f16" : "f32", cl ? " cl" : "");
    Tensor x(dtype, {B, k, C, H, W}, cl), w(MOEFUSION_FLOAT32, {B, k}), out(dtype, {B, C, H, W}, cl);
    x.randomize(2.0f);
    for (size_t i = 0; i < w.count(); ++i)
        w.set(i, 0.05f + uniform());
    x.upload();
    w.upload();
    out.poison();
    status(moefusion_combine(&x.dev, &w.dev, &out.dev, nullptr), "combine");
    status(moefusion_host_combine(&x.host, &w.host, &out.host), "host_combine");
    CUDA_OK(cudaDeviceSynchronize());
    compare("combine", cse, out, tol(dtype));
}

void testConv(int64_t B, int64_t k, int64_t Cin, int64_t Cout, int64_t H, int64_t W, int64_t E, int dtype, bool cl)
{
    char cse[128];
    std::snprintf(cse, sizeof(cse), "B%lld k%lld %lld->%lld %lldx%lld E%lld %s%s", (long long) B, (long long) k,
        (long long) Cin, (long long) Cout, (long long) H, (long long) W, (long long) E,
        dtype == MOEFUSION_FLOAT16 ? "f16" : "f32", cl ? " cl" : "");
    Tensor h(dtype, {B, k, Cin, H, W}, cl), w(dtype, {E, Cout, Cin, 3, 3}), bias(dtype, {E, Cout});
    Tensor idx(MOEFUSION_INT32, {B, k}), gw(MOEFUSION_FLOAT32, {B, k}), out(dtype, {B, Cout, H, W}, cl);
    h.randomize();
    w.randomize(0.3f);
    bias.randomize(0.1f);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < k; ++j)
        {
            idx.set(b * k + j, static_cast<float>((b * 3 + j * 5 + 1) % E)); // distinct per sample when k <= E
            gw.set(b * k + j, 0.05f + uniform());
        }
    for (Tensor* t : {&h, &w, &bias, &idx, &gw})
        t->upload();
    out.poison();
    status(moefusion_expert_conv3x3_combine(&h.dev, &w.dev, &bias.dev, &idx.dev, &gw.dev, &out.dev, nullptr),
        "expert_conv3x3_combine");
    status(moefusion_host_expert_conv3x3_combine(&h.host, &w.host, &bias.host, &idx.host, &gw.host, &out.host),
        "host_expert_conv3x3_combine");
    CUDA_OK(cudaDeviceSynchronize());
    compare("expert_conv3x3_combine", cse, out, dtype == MOEFUSION_FLOAT16 ? 2e-3f : 1e-4f);
}

} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
    {
        std::printf("skip: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop{};
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    std::printf("%s on %s (sm_%d%d)\n", moefusion_build_info(), prop.name, prop.major, prop.minor);

    for (int dtype : {MOEFUSION_FLOAT32, MOEFUSION_FLOAT16})
        for (bool cl : {false, true})
        {
            if (quick)
            {
                if (cl)
                    continue;
                testGate(2, 17, 33, 47, 30, 40, 4, 2, dtype, cl);
                testSplit(2, 3, 5, 16, dtype, cl);
                testCombine(2, 2, 3, 5, 16, dtype, cl);
                testConv(2, 2, 17, 5, 9, 33, 4, dtype, cl);
                continue;
            }
            testGate(2, 5, 13, 17, 4, 6, 4, 2, dtype, cl);
            testGate(3, 19, 37, 29, 7, 5, 8, 3, dtype, cl);
            testGate(1, 32, 61, 83, 30, 40, 4, 2, dtype, cl);
            testGate(2, 3, 1, 1, 3, 2, 5, 5, dtype, cl);
            testGate(1, 4, 9, 9, 9, 9, 32, 7, dtype, cl);
            testSplit(2, 3, 5, 7, dtype, cl);
            testSplit(1, 16, 24, 40, dtype, cl);
            testCombine(2, 2, 3, 5, 7, dtype, cl);
            testCombine(1, 2, 16, 24, 40, dtype, cl);
            testCombine(3, 5, 8, 4, 8, dtype, cl);
            testCombine(1, 8, 1, 3, 3, dtype, cl);
            testConv(1, 2, 16, 1, 13, 37, 4, dtype, cl);
            testConv(2, 2, 8, 16, 9, 33, 4, dtype, cl);
            testConv(2, 3, 5, 7, 8, 32, 6, dtype, cl);
            testConv(1, 1, 17, 40, 10, 5, 2, dtype, cl);
            testConv(2, 8, 2, 3, 3, 3, 8, dtype, cl);
        }
    // a bad call must be refused with a message, not crash
    {
        Tensor x(MOEFUSION_FLOAT32, {1, 2, 3, 4, 5}), w(MOEFUSION_FLOAT32, {1, 3}), out(MOEFUSION_FLOAT32, {1, 3, 4, 5});
        const int st = moefusion_combine(&x.dev, &w.dev, &out.dev, nullptr);
        std::printf("%s refused bad weights shape: %s (%s)\n", st == MOEFUSION_ERROR_INVALID_VALUE ? "ok  " : "FAIL",
            moefusion_status_name(st), moefusion_last_error());
        if (st != MOEFUSION_ERROR_INVALID_VALUE)
            ++gFailures;
    }
    CUDA_OK(cudaDeviceSynchronize());
    std::printf("%s: %d failure(s)\n", gFailures ? "FAILED" : "PASSED", gFailures);
    return gFailures ? 1 : 0;
}
