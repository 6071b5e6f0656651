/*
 * MoEGate (IPluginV3): top-k gate of a mixture of experts. See README.md beside this file.
 */
#pragma once

#include "common/pluginCommon.h"

namespace moefusion
{
namespace plugin
{

class MoEGatePlugin : public MoEPluginBase<MoEGatePlugin>
{
public:
    static constexpr char const* kNAME{"MoEGate"};

    MoEGatePlugin(int32_t gridH, int32_t gridW, int32_t k);
    MoEGatePlugin(MoEGatePlugin const& other);

    static std::vector<char const*> fieldNames() { return {"grid_h", "grid_w", "k"}; }
    static MoEGatePlugin* create(PluginFieldCollection const* fc);

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 2; }
    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void refreshSerialFields();

    int32_t mGridH;
    int32_t mGridW;
    int32_t mK;
    std::vector<PluginField> mSerialFields;
    PluginFieldCollection mSerialFC{};
};

} // namespace plugin
} // namespace moefusion
