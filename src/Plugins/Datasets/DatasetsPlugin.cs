using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>The built-in dataset plugin: shapes (default), mnist, fashion-mnist, cifar10, image-folder.</summary>
public sealed class DatasetsPlugin : IPlugin
{
    public string Name => "OrtFinetune.Plugins.Datasets";

    public void Configure(IServiceCollection services)
    {
        services.AddSingleton<IDatasetProvider, ShapesProvider>();
        services.AddSingleton<IDatasetProvider, MnistProvider>();
        services.AddSingleton<IDatasetProvider, FashionMnistProvider>();
        services.AddSingleton<IDatasetProvider, Cifar10Provider>();
        services.AddSingleton<IDatasetProvider, ImageFolderProvider>();
    }
}
