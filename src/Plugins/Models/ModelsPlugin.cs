using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>Registers the ViT builder, the ONNX import provider and the safetensors weight export.</summary>
public sealed class ModelsPlugin : IPlugin
{
    public string Name => "OrtFinetune.Plugins.Models";

    public void Configure(IServiceCollection services)
    {
        services.AddSingleton<IModelProvider, VitModelProvider>();
        services.AddSingleton<IModelProvider, OnnxModelProvider>();
        services.AddSingleton<IWeightExporter, Weights.WeightExport>();
    }
}
