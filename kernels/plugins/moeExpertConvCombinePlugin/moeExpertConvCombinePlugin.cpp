/*
 * MoEExpertConvCombine (IPluginV3): hidden T[B,k,Cin,H,W], weight TW[E,Cout,Cin,3,3], bias TW[E,Cout],
 *   indices int32[B,k], weights TW2[B,k] -> T[B,Cout,H,W]:
 *   out = logsumexp_j(conv3x3(hidden[:, j], weight[indices[:, j]]) + bias[indices[:, j]] + log weights[:, j]).
 *   One kernel launch, no workspace. CUDA-core direct convolution for thin layers (Cout <= 64).
 */
#include "moeExpertConvCombinePlugin/moeExpertConvCombinePlugin.h"

namespace moefusion
{
namespace plugin
{

int32_t MoEExpertConvCombinePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputDataTypes", nbInputs, 5, nbOutputs, 1))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t MoEExpertConvCombinePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputShapes", nbInputs, 5, nbOutputs, 1))
    {
        return -1;
    }
    if (inputs[0].nbDims != 5 || inputs[1].nbDims != 5 || inputs[2].nbDims != 2 || inputs[3].nbDims != 2
        || inputs[4].nbDims != 2)
    {
        reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT,
            "MoEExpertConvCombine: expected hidden 5-D, weight 5-D, bias/indices/weights 2-D");
        return -1;
    }
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[1].d[1];
    outputs[0].d[2] = inputs[0].d[3];
    outputs[0].d[3] = inputs[0].d[4];
    return 0;
}

bool MoEExpertConvCombinePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 5 || nbOutputs != 1 || pos < 0 || pos >= 6)
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
    case 2: return d.type == inOut[1].desc.type;  // bias like weight
    case 3: return d.type == DataType::kINT32;    // indices
    case 5: return d.type == inOut[0].desc.type;  // out like hidden
    default: return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    }
}

int32_t MoEExpertConvCombinePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    moefusion_tensor const hidden = makeTensor(inputDesc[0], inputs[0]);
    moefusion_tensor const weight = makeTensor(inputDesc[1], inputs[1]);
    moefusion_tensor const bias = makeTensor(inputDesc[2], inputs[2]);
    moefusion_tensor const indices = makeTensor(inputDesc[3], inputs[3]);
    moefusion_tensor const weights = makeTensor(inputDesc[4], inputs[4]);
    moefusion_tensor const out = makeTensor(outputDesc[0], outputs[0]);
    return kernelStatus(moefusion_expert_conv3x3_combine(&hidden, &weight, &bias, &indices, &weights, &out,
                            reinterpret_cast<moefusion_stream_t>(stream)),
        "enqueue");
}

IPluginCreatorInterface* moeExpertConvCombineCreator() noexcept
{
    static MoECreatorBase<MoEExpertConvCombinePlugin> creator;
    return &creator;
}

} // namespace plugin
} // namespace moefusion
