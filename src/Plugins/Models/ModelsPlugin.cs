using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>Registers the ViT builder and the ONNX import provider.</summary>
public sealed class ModelsPlugin : IPlugin
{
    public string Name => "OrtFinetune.Plugins.Models";

    public void Configure(IServiceCollection services)
    {
        services.AddSingleton<IModelProvider, VitModelProvider>();
        services.AddSingleton<IModelProvider, OnnxModelProvider>();
    }
}
