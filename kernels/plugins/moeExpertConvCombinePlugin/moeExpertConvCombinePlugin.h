/*
 * MoEExpertConvCombine (IPluginV3): last 3x3 conv of the chosen experts fused with the combine. See README.md beside this file.
 */
#pragma once

#include "common/pluginCommon.h"

namespace moefusion
{
namespace plugin
{

class MoEExpertConvCombinePlugin : public MoEPluginBase<MoEExpertConvCombinePlugin>
{
public:
    static constexpr char const* kNAME{"MoEExpertConvCombine"};

    MoEExpertConvCombinePlugin() = default;
    MoEExpertConvCombinePlugin(MoEExpertConvCombinePlugin const& other) = default;

    static std::vector<char const*> fieldNames() { return {}; }
    static MoEExpertConvCombinePlugin* create(PluginFieldCollection const* /*fc*/) { return new MoEExpertConvCombinePlugin(); }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override;

    // IPluginV3OneRuntime
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mNoFields; }

private:
    PluginFieldCollection mNoFields{};
};

} // namespace plugin
} // namespace moefusion
