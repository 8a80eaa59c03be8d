using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using McMaster.NETCore.Plugins;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Host.Plugins;

/// <summary>A loaded plugin, or one that failed to load (with the reason).</summary>
public sealed record PluginInfo(string Name, string Path, string Version, IReadOnlyList<string> Provides, string? Error);

/// <summary>
/// Finds plugins in the configured folders (each plugin in &lt;folder&gt;/&lt;Name&gt;/&lt;Name&gt;.dll), loads them
/// with McMaster.NETCore.Plugins sharing the contract assemblies with the host, and collects their
/// providers by name. A plugin that fails to load, or claims a name another plugin already has, is
/// reported by name and skipped; the others still load. A plugin built against another major version of
/// the contracts (OrtFinetune.Abstractions), or a newer one than the host's, is refused before it is loaded,
/// with an error naming the plugin and both versions.
/// </summary>
public sealed class PluginCatalog
{
    readonly List<PluginInfo> _plugins = new();
    readonly Dictionary<string, (IDatasetProvider Provider, string Plugin)> _datasets = new(StringComparer.OrdinalIgnoreCase);
    readonly Dictionary<string, (IModelProvider Provider, string Plugin)> _models = new(StringComparer.OrdinalIgnoreCase);
    readonly Dictionary<Type, List<(object Service, string Plugin)>> _others = new();

    public IReadOnlyList<PluginInfo> Plugins => _plugins;
    public IReadOnlyDictionary<string, (IDatasetProvider Provider, string Plugin)> Datasets => _datasets;
    public IReadOnlyDictionary<string, (IModelProvider Provider, string Plugin)> Models => _models;
    public IEnumerable<PluginInfo> Failed => _plugins.Where(p => p.Error != null);

    /// <summary>Services of other contract types (e.g. precision policies), with the plugin that registered them.</summary>
    public IReadOnlyList<(T Service, string Plugin)> Services<T>() =>
        _others.TryGetValue(typeof(T), out var l) ? l.Select(x => ((T)x.Service, x.Plugin)).ToList() : [];

    /// <summary>Types shared between the host and every plugin: the contracts and what they expose.</summary>
    static readonly Type[] SharedTypes =
    [
        typeof(IPlugin), typeof(IDatasetProvider), typeof(IModelProvider), typeof(OrtFinetune.Onnx.Model),
        typeof(IServiceCollection), typeof(ILogger), typeof(ILoggerFactory),
    ];

    /// <summary>
    /// The contract assemblies whose version a plugin is checked against: OrtFinetune.Abstractions and the IR it
    /// exposes (OrtFinetune.Onnx); one version for both (Directory.Build.props).
    /// </summary>
    public static IReadOnlyList<AssemblyName> ContractAssemblies { get; } =
        [typeof(IPlugin).Assembly.GetName(), typeof(OrtFinetune.Onnx.Model).Assembly.GetName()];

    /// <summary>
    /// Null when <paramref name="dll"/> references the contract assemblies at a version this host can serve:
    /// the same major version, and not a newer one (a plugin built against 1.3 may use members a 1.0 host
    /// lacks). Otherwise the error, naming the plugin and both versions. Reads the plugin's assembly references
    /// from its metadata without loading it; a file that is not an assembly is left to the loader to report.
    /// </summary>
    public static string? ContractMismatch(string name, string dll)
    {
        try
        {
            using var stream = File.OpenRead(dll);
            using var pe = new PEReader(stream);
            if (!pe.HasMetadata) return null;
            var md = pe.GetMetadataReader();
            if (!md.IsAssembly) return null;
            var self = md.GetAssemblyDefinition();
            var plugin = $"plugin '{name}' ({md.GetString(self.Name)} {self.Version.ToString(3)}, {dll})";
            foreach (var h in md.AssemblyReferences)
            {
                var r = md.GetAssemblyReference(h);
                var refName = md.GetString(r.Name);
                var host = ContractAssemblies.FirstOrDefault(a => string.Equals(a.Name, refName, StringComparison.OrdinalIgnoreCase));
                if (host?.Version is not { } hv) continue;
                var pv = r.Version;
                if (pv.Major != hv.Major)
                    return $"{plugin} was built against {refName} {pv.ToString(3)}, but this ortfinetune has {refName} {hv.ToString(3)}: "
                         + $"major versions differ ({pv.Major} vs {hv.Major}); rebuild the plugin against {refName} {hv.Major}.x";
                if (pv > hv)
                    return $"{plugin} was built against {refName} {pv.ToString(3)}, newer than this ortfinetune's {refName} {hv.ToString(3)}: "
                         + $"update ortfinetune, or build the plugin against {refName} {hv.ToString(2)}";
            }
            return null;
        }
        catch (Exception e) when (e is BadImageFormatException or IOException or UnauthorizedAccessException) { return null; }
    }

    public static PluginCatalog Load(IEnumerable<string> folders, ILogger? log = null)
    {
        var catalog = new PluginCatalog();
        foreach (var folder in folders)
        {
            if (!Directory.Exists(folder))
            {
                log?.LogWarning("plugin folder {Folder} does not exist", folder);
                continue;
            }
            foreach (var dir in Directory.GetDirectories(folder).Order(StringComparer.Ordinal))
            {
                var name = System.IO.Path.GetFileName(dir);
                var dll = System.IO.Path.Combine(dir, name + ".dll");
                if (!File.Exists(dll))
                {
                    catalog.Fail(name, dll, $"plugin folder '{dir}' has no {name}.dll", log);
                    continue;
                }
                catalog.LoadOne(name, dll, log);
            }
        }
        return catalog;
    }

    void Fail(string name, string path, string error, ILogger? log)
    {
        _plugins.Add(new PluginInfo(name, path, "", [], error));
        log?.LogError("plugin {Plugin} not loaded: {Error}", name, error);
    }

    void LoadOne(string name, string dll, ILogger? log)
    {
        Assembly asm;
        List<IPlugin> entries;
        if (ContractMismatch(name, dll) is { } mismatch)
        {
            Fail(name, dll, mismatch, log);
            return;
        }
        try
        {
            var loader = PluginLoader.CreateFromAssemblyFile(dll, SharedTypes, c => c.PreferSharedTypes = true);
            asm = loader.LoadDefaultAssembly();
            entries = asm.GetExportedTypes()
                .Where(t => typeof(IPlugin).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
                .Select(t => (IPlugin)Activator.CreateInstance(t)!).ToList();
        }
        catch (Exception e) when (e is BadImageFormatException or FileLoadException or FileNotFoundException or TypeLoadException
                                  or ReflectionTypeLoadException or TargetInvocationException or MissingMethodException or InvalidCastException)
        {
            Fail(name, dll, $"{e.GetType().Name}: {(e is TargetInvocationException t ? t.InnerException?.Message : e.Message)}", log);
            return;
        }
        if (entries.Count == 0)
        {
            Fail(name, dll, $"{System.IO.Path.GetFileName(dll)} has no public class implementing {nameof(IPlugin)}", log);
            return;
        }
        var provides = new List<string>();
        var problems = new List<string>();
        foreach (var entry in entries)
        {
            ServiceProvider sp;
            var services = new ServiceCollection();
            try
            {
                entry.Configure(services);
                sp = services.BuildServiceProvider();
            }
            catch (Exception e)
            {
                problems.Add($"{entry.GetType().Name}.Configure failed: {e.Message}");
                continue;
            }
            var resolved = new List<(Type Type, object Service)>();
            foreach (var type in services.Select(d => d.ServiceType).Distinct())
            {
                try { resolved.AddRange(sp.GetServices(type).Where(x => x != null).Select(x => (type, (object)x!))); }
                catch (Exception e) { problems.Add($"cannot create {type.Name}: {e.Message}"); }
            }
            foreach (var (serviceType, svc) in resolved)
            {
                switch (svc)
                {
                    case IDatasetProvider ds:
                        if (_datasets.TryGetValue(ds.Name, out var prev)) problems.Add($"dataset '{ds.Name}' is already provided by plugin '{prev.Plugin}'");
                        else { _datasets[ds.Name] = (ds, name); provides.Add("dataset " + ds.Name); }
                        break;
                    case IModelProvider mp:
                        foreach (var arch in mp.Architectures)
                        {
                            if (_models.TryGetValue(arch, out var pm)) problems.Add($"model '{arch}' is already provided by plugin '{pm.Plugin}'");
                            else { _models[arch] = (mp, name); provides.Add("model " + arch); }
                        }
                        break;
                    default:
                        if (!_others.TryGetValue(serviceType, out var l)) _others[serviceType] = l = new();
                        l.Add((svc, name));
                        provides.Add($"{serviceType.Name} {(svc.GetType().GetProperty("Name")?.GetValue(svc) ?? svc.GetType().Name)}");
                        break;
                }
            }
        }
        var version = asm.GetName().Version?.ToString() ?? "";
        var error = problems.Count > 0 ? string.Join("; ", problems) : null;
        if (error != null) log?.LogError("plugin {Plugin}: {Error}", name, error);
        _plugins.Add(new PluginInfo(name, dll, version, provides, error));
    }
}
