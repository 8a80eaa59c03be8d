using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

public class PluginTests
{
    [Fact]
    public void RegistersAllProvidersAsSingletons()
    {
        IServiceCollection services = new ServiceCollection();
        new DatasetsPlugin().Configure(services);
        Assert.All(services, d => Assert.Equal(ServiceLifetime.Singleton, d.Lifetime));
        Assert.All(services, d => Assert.Equal(typeof(IDatasetProvider), d.ServiceType));
        var names = services.Select(d => ((IDatasetProvider)Activator.CreateInstance(d.ImplementationType!)!).Name).ToArray();
        Assert.Equal(new[] { "shapes", "mnist", "fashion-mnist", "cifar10", "image-folder" }, names);
    }
}
