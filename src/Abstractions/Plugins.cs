using Microsoft.Extensions.DependencyInjection;

namespace OrtFinetune.Abstractions;

/// <summary>
/// The entry point of a plugin assembly: the host finds the (one) public class implementing this
/// interface in plugins/&lt;Name&gt;/&lt;Name&gt;.dll, creates it, and lets it register its providers
/// (IDatasetProvider, IModelProvider, IPrecisionPolicy) as singletons.
/// </summary>
/// <remarks>
/// A plugin is a class library built against this package with the reference marked
/// <c>ExcludeAssets="runtime"</c> (and <c>Private="false"</c> for a project reference): the contract
/// assemblies (OrtFinetune.Abstractions, OrtFinetune.Onnx, Microsoft.Extensions.*.Abstractions) always
/// come from the host, so the types a plugin returns are the host's types. The host refuses a plugin built
/// against another major version of OrtFinetune.Abstractions, naming the plugin and both versions.
/// </remarks>
public interface IPlugin
{
    /// <summary>A name for messages and <c>ortfinetune plugins</c> (the providers have their own names).</summary>
    string Name { get; }

    /// <summary>
    /// Registers the plugin's providers as singletons, e.g.
    /// <c>services.AddSingleton&lt;IDatasetProvider, MyDataset&gt;()</c>. Called once when the plugin loads;
    /// an exception here is reported by plugin name and the other plugins still load.
    /// </summary>
    void Configure(IServiceCollection services);
}
