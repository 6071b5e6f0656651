/*
 * Shared pieces of the MoE-Fusion TensorRT plugins (TensorRT >= 10, IPluginV3 / IPluginCreatorV3One):
 * logging, error reporting, descriptor conversion, and CRTP bases that hold the boilerplate of the
 * IPluginV3 capability interfaces. Every method is noexcept; errors go to the execution context's error
 * recorder (after attachToContext) or to the logger TensorRT hands over through setLoggerFinder().
 */
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "moefusion_kernels.h"

namespace moefusion
{
namespace plugin
{

using namespace nvinfer1;

constexpr char const* kPLUGIN_VERSION{"1"};
constexpr char const* kPLUGIN_NAMESPACE{""};

//! Store the finder given to setLoggerFinder() (thread-safe).
void setLoggerFinderImpl(ILoggerFinder* finder) noexcept;

//! Log through TensorRT's logger, or to stderr when TensorRT gave none.
void logMessage(ILogger::Severity severity, char const* msg) noexcept;

//! Report an error to `recorder` when there is one, else log it as an error.
void reportError(IErrorRecorder* recorder, ErrorCode code, char const* fmt, ...) noexcept
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

//! TensorRT data type -> moefusion_dtype; false when the kernels do not take it.
bool toMoeDtype(DataType type, int32_t& out) noexcept;

//! A moefusion_tensor for a linear (contiguous) TensorRT tensor.
moefusion_tensor makeTensor(PluginTensorDesc const& desc, void const* data) noexcept;

//! Read an integer plugin field of any integer type (the ONNX parser passes INT attributes as kINT32,
//! other front ends may use kINT64).
bool readIntField(PluginField const& field, int64_t& out) noexcept;

//! Validate the counts TensorRT passes to a method; report and return false on a mismatch.
bool checkCounts(IErrorRecorder* recorder, char const* plugin, char const* method, int32_t nbInputs,
    int32_t expectInputs, int32_t nbOutputs, int32_t expectOutputs) noexcept;

//! Boilerplate of a V3 plugin: capabilities, clone, names, context attachment, error reporting.
template <class Derived>
class MoEPluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime
{
public:
    MoEPluginBase() = default;
    MoEPluginBase(MoEPluginBase const&) = default;
    ~MoEPluginBase() override = default;

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        catch (std::exception const& e)
        {
            reportError(mRecorder, ErrorCode::kFAILED_ALLOCATION, "%s: clone failed: %s", Derived::kNAME, e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return Derived::kNAME; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

    // IPluginV3OneBuild (defaults)
    int32_t configurePlugin(DynamicPluginTensorDesc const* /*in*/, int32_t /*nbInputs*/,
        DynamicPluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept override
    {
        return 0;
    }

    // IPluginV3OneRuntime (defaults)
    int32_t onShapeChange(PluginTensorDesc const* /*in*/, int32_t /*nbInputs*/, PluginTensorDesc const* /*out*/,
        int32_t /*nbOutputs*/) noexcept override
    {
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override
    {
        auto* copy = static_cast<Derived*>(clone());
        if (copy != nullptr && context != nullptr)
        {
            copy->mRecorder = context->getErrorRecorder();
        }
        return copy;
    }

    void setPluginNamespace(char const* ns) noexcept
    {
        try
        {
            mNamespace = ns ? ns : "";
        }
        catch (std::exception const&)
        {
        }
    }

protected:
    //! Map a moefusion_status to enqueue's return value, reporting the library's message on failure.
    int32_t kernelStatus(int status, char const* what) const noexcept
    {
        if (status == MOEFUSION_SUCCESS)
        {
            return 0;
        }
        reportError(mRecorder, status == MOEFUSION_ERROR_CUDA ? ErrorCode::kFAILED_EXECUTION : ErrorCode::kINVALID_ARGUMENT,
            "%s: %s: %s: %s", Derived::kNAME, what, moefusion_status_name(status), moefusion_last_error());
        return -1;
    }

    IErrorRecorder* mRecorder{nullptr};
    std::string mNamespace{kPLUGIN_NAMESPACE};
};

//! Boilerplate of a V3 creator. `Plugin` provides kNAME, fieldNames() and create(fc, recorder).
template <class Plugin>
class MoECreatorBase : public IPluginCreatorV3One
{
public:
    MoECreatorBase()
    {
        for (char const* name : Plugin::fieldNames())
        {
            mFields.emplace_back(name, nullptr, PluginFieldType::kINT32, 1);
        }
        mFC.nbFields = static_cast<int32_t>(mFields.size());
        mFC.fields = mFields.data();
    }

    AsciiChar const* getPluginName() const noexcept override { return Plugin::kNAME; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            Plugin* plugin = Plugin::create(fc);
            if (plugin != nullptr)
            {
                plugin->setPluginNamespace(mNamespace.c_str());
            }
            return plugin;
        }
        catch (std::exception const& e)
        {
            reportError(nullptr, ErrorCode::kINVALID_ARGUMENT, "%s: createPlugin failed: %s", Plugin::kNAME, e.what());
        }
        return nullptr;
    }

private:
    std::vector<PluginField> mFields;
    PluginFieldCollection mFC{};
    std::string mNamespace{kPLUGIN_NAMESPACE};
};

//! The creators of this library (defined next to each plugin).
IPluginCreatorInterface* moeGateCreator() noexcept;
IPluginCreatorInterface* moeCombineCreator() noexcept;

} // namespace plugin
} // namespace moefusion
