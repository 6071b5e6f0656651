/*
 * Shared pieces of the MoE-Fusion TensorRT plugins and the plugin-library entry points
 * (setLoggerFinder / getCreators) that IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and
 * IBuilderConfig plugin serialisation use.
 */
#include "common/pluginCommon.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>

namespace moefusion
{
namespace plugin
{

namespace
{
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};
} // namespace

void setLoggerFinderImpl(ILoggerFinder* finder) noexcept
{
    ILoggerFinder* expected = nullptr;
    gLoggerFinder.compare_exchange_strong(expected, finder);
}

void logMessage(ILogger::Severity severity, char const* msg) noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(severity, msg);
    }
    else if (severity <= ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[moefusion_trt_plugins] %s\n", msg);
    }
}

void reportError(IErrorRecorder* recorder, ErrorCode code, char const* fmt, ...) noexcept
{
    char msg[1024];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);
    if (recorder != nullptr)
    {
        recorder->reportError(code, msg);
    }
    else
    {
        logMessage(ILogger::Severity::kERROR, msg);
    }
}

bool toMoeDtype(DataType type, int32_t& out) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: out = MOEFUSION_FLOAT32; return true;
    case DataType::kHALF: out = MOEFUSION_FLOAT16; return true;
    case DataType::kINT32: out = MOEFUSION_INT32; return true;
    default: return false;
    }
}

moefusion_tensor makeTensor(PluginTensorDesc const& desc, void const* data) noexcept
{
    moefusion_tensor t{};
    t.data = const_cast<void*>(data);
    int32_t code = -1;
    t.dtype = toMoeDtype(desc.type, code) ? code : -1; // -1: the kernels refuse it with a message
    t.ndim = desc.dims.nbDims <= MOEFUSION_MAX_DIMS ? desc.dims.nbDims : -1;
    int64_t stride = 1;
    for (int32_t i = desc.dims.nbDims - 1; i >= 0; --i)
    {
        if (i < MOEFUSION_MAX_DIMS)
        {
            t.shape[i] = desc.dims.d[i];
            t.stride[i] = stride;
        }
        stride *= desc.dims.d[i];
    }
    return t;
}

bool readIntField(PluginField const& field, int64_t& out) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(field.data); return true;
    case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(field.data); return true;
    case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: out = *static_cast<int64_t const*>(field.data); return true;
    default: return false;
    }
}

bool checkCounts(IErrorRecorder* recorder, char const* plugin, char const* method, int32_t nbInputs,
    int32_t expectInputs, int32_t nbOutputs, int32_t expectOutputs) noexcept
{
    if (nbInputs == expectInputs && nbOutputs == expectOutputs)
    {
        return true;
    }
    reportError(recorder, ErrorCode::kINVALID_ARGUMENT, "%s::%s: %d inputs and %d outputs, expected %d and %d",
        plugin, method, nbInputs, nbOutputs, expectInputs, expectOutputs);
    return false;
}

} // namespace plugin
} // namespace moefusion

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    moefusion::plugin::setLoggerFinderImpl(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    using namespace moefusion::plugin;
    static IPluginCreatorInterface* const kCreators[] = {
        moeGateCreator(),
        moeCombineCreator(),
    };
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}
