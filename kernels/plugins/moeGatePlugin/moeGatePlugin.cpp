/*
 * MoEGate (IPluginV3): features [B,C,H,W] (fp32/fp16), w_gate [C*grid_h*grid_w, E] (fp32/fp16)
 *   -> indices int32 [B,k], weights fp32 [B,k]. One kernel launch (plus a 4*B-byte memset of the
 *   workspace's ticket counters, since TensorRT does not keep workspace contents between launches).
 */
#include "moeGatePlugin/moeGatePlugin.h"

#include <cstring>
#include <stdexcept>

namespace moefusion
{
namespace plugin
{

MoEGatePlugin::MoEGatePlugin(int32_t gridH, int32_t gridW, int32_t k)
    : mGridH(gridH)
    , mGridW(gridW)
    , mK(k)
{
    if (gridH < 1 || gridW < 1 || k < 1 || k > MOEFUSION_MAX_EXPERTS)
    {
        throw std::invalid_argument("MoEGate: grid_h, grid_w >= 1 and 1 <= k <= 32 required");
    }
    refreshSerialFields();
}

MoEGatePlugin::MoEGatePlugin(MoEGatePlugin const& other)
    : MoEPluginBase<MoEGatePlugin>(other)
    , mGridH(other.mGridH)
    , mGridW(other.mGridW)
    , mK(other.mK)
{
    refreshSerialFields(); // the fields point into this object, not into `other`
}

void MoEGatePlugin::refreshSerialFields()
{
    mSerialFields.clear();
    mSerialFields.emplace_back("grid_h", &mGridH, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("grid_w", &mGridW, PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back("k", &mK, PluginFieldType::kINT32, 1);
    mSerialFC.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialFC.fields = mSerialFields.data();
}

MoEGatePlugin* MoEGatePlugin::create(PluginFieldCollection const* fc)
{
    int64_t gridH = -1, gridW = -1, k = -1;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        int64_t* dst = std::strcmp(f.name, "grid_h") == 0 ? &gridH
            : std::strcmp(f.name, "grid_w") == 0          ? &gridW
            : std::strcmp(f.name, "k") == 0               ? &k
                                                          : nullptr;
        if (dst != nullptr && !readIntField(f, *dst))
        {
            throw std::invalid_argument(std::string("MoEGate: attribute ") + f.name + " must be an integer");
        }
    }
    if (gridH < 0 || gridW < 0 || k < 0)
    {
        throw std::invalid_argument("MoEGate: attributes grid_h, grid_w and k are required");
    }
    return new MoEGatePlugin(static_cast<int32_t>(gridH), static_cast<int32_t>(gridW), static_cast<int32_t>(k));
}

int32_t MoEGatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t nbInputs) const noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputDataTypes", nbInputs, 2, nbOutputs, 2))
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kFLOAT;
    return 0;
}

int32_t MoEGatePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputShapes", nbInputs, 2, nbOutputs, 2))
    {
        return -1;
    }
    if (inputs[0].nbDims != 4 || inputs[1].nbDims != 2)
    {
        reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT, "MoEGate: features must be 4-D and w_gate 2-D");
        return -1;
    }
    for (int32_t o = 0; o < 2; ++o)
    {
        outputs[o].nbDims = 2;
        outputs[o].d[0] = inputs[0].d[0];
        outputs[o].d[1] = exprBuilder.constant(mK);
    }
    return 0;
}

bool MoEGatePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 2 || pos < 0 || pos >= 4)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0:
    case 1: return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    case 2: return d.type == DataType::kINT32;
    default: return d.type == DataType::kFLOAT;
    }
}

int32_t MoEGatePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!checkCounts(mRecorder, kNAME, "configurePlugin", nbInputs, 2, nbOutputs, 2))
    {
        return -1;
    }
    int64_t const C = in[0].desc.dims.d[1];
    int64_t const rows = in[1].desc.dims.d[0];
    int64_t const E = in[1].desc.dims.d[1];
    if (C > 0 && rows > 0 && rows != C * mGridH * mGridW)
    {
        reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT,
            "MoEGate: w_gate has %lld rows, expected C*grid_h*grid_w = %lld", static_cast<long long>(rows),
            static_cast<long long>(C * mGridH * mGridW));
        return -1;
    }
    if (E > 0 && (E > MOEFUSION_MAX_EXPERTS || mK > E))
    {
        reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT, "MoEGate: E = %lld experts, k = %d (need k <= E <= %d)",
            static_cast<long long>(E), mK, MOEFUSION_MAX_EXPERTS);
        return -1;
    }
    return 0;
}

size_t MoEGatePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs != 2)
    {
        return 0;
    }
    size_t bytes = 0;
    int64_t const B = inputs[0].max.d[0], C = inputs[0].max.d[1], E = inputs[1].max.d[1];
    if (moefusion_gate_workspace_size(B, C, mGridH, mGridW, static_cast<int32_t>(E), &bytes) != MOEFUSION_SUCCESS)
    {
        return 0;
    }
    return bytes + 256; // room to align the workspace pointer to 256 bytes
}

int32_t MoEGatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    moefusion_tensor const features = makeTensor(inputDesc[0], inputs[0]);
    moefusion_tensor const wGate = makeTensor(inputDesc[1], inputs[1]);
    moefusion_tensor const indices = makeTensor(outputDesc[0], outputs[0]);
    moefusion_tensor const weights = makeTensor(outputDesc[1], outputs[1]);
    size_t bytes = 0;
    int status = moefusion_gate_workspace_size(features.shape[0], features.shape[1], mGridH, mGridW,
        static_cast<int32_t>(wGate.shape[1]), &bytes);
    if (status != MOEFUSION_SUCCESS)
    {
        return kernelStatus(status, "workspace size");
    }
    auto const base = reinterpret_cast<uintptr_t>(workspace);
    void* aligned = reinterpret_cast<void*>((base + 255) / 256 * 256);
    status = moefusion_gate(&features, &wGate, mGridH, mGridW, mK, &indices, &weights, aligned, bytes,
        MOEFUSION_GATE_CLEAR_WORKSPACE, reinterpret_cast<moefusion_stream_t>(stream));
    return kernelStatus(status, "enqueue");
}

PluginFieldCollection const* MoEGatePlugin::getFieldsToSerialize() noexcept
{
    return &mSerialFC;
}

IPluginCreatorInterface* moeGateCreator() noexcept
{
    static MoECreatorBase<MoEGatePlugin> creator;
    return &creator;
}

} // namespace plugin
} // namespace moefusion
