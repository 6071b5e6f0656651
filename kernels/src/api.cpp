// Library information and error reporting of the C ABI (host code only).
#include <cstdarg>
#include <cstdio>
#include <string>

#include <cuda_runtime_api.h>

#include "moefusion_kernels.h"

#ifndef MOEFUSION_KERNELS_VERSION
#define MOEFUSION_KERNELS_VERSION "0.1.0"
#endif
#ifndef MOEFUSION_CUDA_ARCHS
#define MOEFUSION_CUDA_ARCHS "unknown"
#endif

#define MF_STR2(x) #x
#define MF_STR(x) MF_STR2(x)

namespace mf {

int fail(int status, const char* fmt, ...);
void clear_error();
int check_launch(const char* what);

namespace {
thread_local char g_last_error[512] = "";
}

int fail(int status, const char* fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
    va_end(args);
    return status;
}

void clear_error() { g_last_error[0] = '\0'; }

int check_launch(const char* what)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fail(MOEFUSION_ERROR_CUDA, "%s: CUDA error %s (%s)", what, cudaGetErrorName(err), cudaGetErrorString(err));
    return MOEFUSION_SUCCESS;
}

} // namespace mf

extern "C" {

MOEFUSION_API int moefusion_abi_version(void) { return MOEFUSION_KERNELS_ABI_VERSION; }

MOEFUSION_API const char* moefusion_build_info(void)
{
    static const std::string info = std::string("moefusion_kernels ") + MOEFUSION_KERNELS_VERSION + " abi "
        + std::to_string(MOEFUSION_KERNELS_ABI_VERSION) + "; CUDA " + std::to_string(CUDART_VERSION / 1000) + "."
        + std::to_string(CUDART_VERSION % 1000 / 10) + "; archs " + MOEFUSION_CUDA_ARCHS;
    return info.c_str();
}

MOEFUSION_API const char* moefusion_status_name(int status)
{
    switch (status)
    {
    case MOEFUSION_SUCCESS: return "MOEFUSION_SUCCESS";
    case MOEFUSION_ERROR_INVALID_VALUE: return "MOEFUSION_ERROR_INVALID_VALUE";
    case MOEFUSION_ERROR_NOT_SUPPORTED: return "MOEFUSION_ERROR_NOT_SUPPORTED";
    case MOEFUSION_ERROR_WORKSPACE: return "MOEFUSION_ERROR_WORKSPACE";
    case MOEFUSION_ERROR_CUDA: return "MOEFUSION_ERROR_CUDA";
    default: return "MOEFUSION_ERROR_UNKNOWN";
    }
}

MOEFUSION_API const char* moefusion_last_error(void) { return mf::g_last_error; }

} // extern "C"
