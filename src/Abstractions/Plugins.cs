using Microsoft.Extensions.DependencyInjection;

namespace OrtFinetune.Abstractions;

/// <summary>
/// The entry point of a plugin assembly: the host finds the (one) public class implementing this
/// interface in plugins/&lt;Name&gt;/&lt;Name&gt;.dll, creates it, and lets it register its providers
/// (IDatasetProvider, IModelProvider, IPrecisionPolicy) as singletons.
/// </summary>
public interface IPlugin
{
    string Name { get; }
    void Configure(IServiceCollection services);
}
