/*
 * MoEAttentionSplit (IPluginV3): foreground/background split of two modalities by an attention map. See README.md beside this file.
 */
#pragma once

#include "common/pluginCommon.h"

namespace moefusion
{
namespace plugin
{

class MoEAttentionSplitPlugin : public MoEPluginBase<MoEAttentionSplitPlugin>
{
public:
    static constexpr char const* kNAME{"MoEAttentionSplit"};

    MoEAttentionSplitPlugin() = default;
    MoEAttentionSplitPlugin(MoEAttentionSplitPlugin const& other) = default;

    static std::vector<char const*> fieldNames() { return {}; }
    static MoEAttentionSplitPlugin* create(PluginFieldCollection const* /*fc*/) { return new MoEAttentionSplitPlugin(); }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 2; }
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
