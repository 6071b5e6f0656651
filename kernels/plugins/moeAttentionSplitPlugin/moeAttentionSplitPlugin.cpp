/*
 * MoEAttentionSplit (IPluginV3): x0 T[B,C,H,W], x1 T[B,C,H,W], att T[B,1,H,W]
 *   -> fg = concat(x0*att, x1*att), bg = concat(x0*(1-att), x1*(1-att)), both T[B,2C,H,W].
 *   One kernel launch, no workspace.
 */
#include "moeAttentionSplitPlugin/moeAttentionSplitPlugin.h"

namespace moefusion
{
namespace plugin
{

int32_t MoEAttentionSplitPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputDataTypes", nbInputs, 3, nbOutputs, 2))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = inputTypes[0];
    return 0;
}

int32_t MoEAttentionSplitPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (!checkCounts(mRecorder, kNAME, "getOutputShapes", nbInputs, 3, nbOutputs, 2))
    {
        return -1;
    }
    if (inputs[0].nbDims != 4 || inputs[1].nbDims != 4 || inputs[2].nbDims != 4)
    {
        reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT, "MoEAttentionSplit: x0, x1 and att must be 4-D");
        return -1;
    }
    IDimensionExpr const* twoC = exprBuilder.operation(DimensionOperation::kPROD, *inputs[0].d[1], *exprBuilder.constant(2));
    for (int32_t o = 0; o < 2; ++o)
    {
        outputs[o].nbDims = 4;
        outputs[o].d[0] = inputs[0].d[0];
        outputs[o].d[1] = twoC;
        outputs[o].d[2] = inputs[0].d[2];
        outputs[o].d[3] = inputs[0].d[3];
    }
    return 0;
}

bool MoEAttentionSplitPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 2 || pos < 0 || pos >= 5)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    }
    return d.type == inOut[0].desc.type;
}

int32_t MoEAttentionSplitPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    moefusion_tensor const x0 = makeTensor(inputDesc[0], inputs[0]);
    moefusion_tensor const x1 = makeTensor(inputDesc[1], inputs[1]);
    moefusion_tensor const att = makeTensor(inputDesc[2], inputs[2]);
    moefusion_tensor const fg = makeTensor(outputDesc[0], outputs[0]);
    moefusion_tensor const bg = makeTensor(outputDesc[1], outputs[1]);
    return kernelStatus(
        moefusion_attention_split(&x0, &x1, &att, &fg, &bg, reinterpret_cast<moefusion_stream_t>(stream)), "enqueue");
}

IPluginCreatorInterface* moeAttentionSplitCreator() noexcept
{
    static MoECreatorBase<MoEAttentionSplitPlugin> creator;
    return &creator;
}

} // namespace plugin
} // namespace moefusion
