/*
 * MoECombine (IPluginV3): expert_outputs T[B,k,C,H,W], weights TW[B,k] -> T[B,C,H,W],
 *   out = logsumexp_j(expert_outputs[:, j] + log weights[:, j]). One kernel launch, no workspace.
 */
#include "moeCombinePlugin/moeCombinePlugin.h"

namespace moefusion
{
namespace plugin
{

int32_t MoECombinePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputDataTypes", nbInputs, 2, nbOutputs, 1))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t MoECombinePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputShapes", nbInputs, 2, nbOutputs, 1))
    {
        return -1;
    }
    if (inputs[0].nbDims != 5 || inputs[1].nbDims != 2)
    {
        reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT, "MoECombine: expert_outputs must be 5-D, weights 2-D");
        return -1;
    }
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[0].d[2];
    outputs[0].d[2] = inputs[0].d[3];
    outputs[0].d[3] = inputs[0].d[4];
    return 0;
}

bool MoECombinePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= 3)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 2)
    {
        return d.type == inOut[0].desc.type;
    }
    return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
}

int32_t MoECombinePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    moefusion_tensor const x = makeTensor(inputDesc[0], inputs[0]);
    moefusion_tensor const w = makeTensor(inputDesc[1], inputs[1]);
    moefusion_tensor const out = makeTensor(outputDesc[0], outputs[0]);
    return kernelStatus(moefusion_combine(&x, &w, &out, reinterpret_cast<moefusion_stream_t>(stream)), "enqueue");
}

IPluginCreatorInterface* moeCombineCreator() noexcept
{
    static MoECreatorBase<MoECombinePlugin> creator;
    return &creator;
}

} // namespace plugin
} // namespace moefusion
