using System.Reflection;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

/// <summary>
/// A plugin is built outside this repo, usually with the SDK's default implicit usings. A public type of the
/// contract assemblies it touches must then not share its simple name with a public type of those namespaces,
/// or the plugin's first use of it is ambiguous (CS0104), as OrtFinetune.Onnx.Attribute was with System.Attribute.
/// </summary>
public class ContractNameTests(ITestOutputHelper log)
{
    /// <summary>The namespaces of Microsoft.NET.Sdk's default implicit usings (ImplicitUsings=enable).</summary>
    static readonly string[] ImplicitNamespaces =
        ["System", "System.IO", "System.Linq", "System.Collections.Generic", "System.Net.Http", "System.Threading", "System.Threading.Tasks"];

    static string SimpleName(Type t) => t.Name.Split('`')[0];

    /// <summary>Public type names of those namespaces in every managed assembly of the running shared framework.</summary>
    static HashSet<string> FrameworkNames(out int assemblies)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        assemblies = 0;
        var dir = Path.GetDirectoryName(typeof(object).Assembly.Location)!;
        foreach (var file in Directory.GetFiles(dir, "*.dll"))
        {
            Assembly a;
            try { a = Assembly.Load(AssemblyName.GetAssemblyName(file)); }
            catch (BadImageFormatException) { continue; }   // native libraries beside the managed ones
            assemblies++;
            Type[] types;
            try { types = a.GetExportedTypes(); }
            catch (ReflectionTypeLoadException e) { types = e.Types.Where(t => t is { IsPublic: true }).ToArray()!; }
            foreach (var t in types)
                if (t.Namespace is { } ns && ImplicitNamespaces.Contains(ns)) names.Add(SimpleName(t));
        }
        return names;
    }

    [Fact]
    public void ContractTypesDoNotShareANameWithTheImplicitUsingsTypes()
    {
        var framework = FrameworkNames(out int assemblies);
        // The check itself: it must see the types the SDK's usings bring in.
        Assert.Contains("Attribute", framework);
        Assert.Contains("HttpClient", framework);
        Assert.Contains("Task", framework);
        Assert.Contains("List", framework);
        var contract = new[] { typeof(IPlugin).Assembly, typeof(Model).Assembly }
            .SelectMany(a => a.GetExportedTypes()).Where(t => !t.IsNested).ToList();
        Assert.Contains(typeof(NodeAttribute), contract);
        log.WriteLine($"{contract.Count} public contract types against {framework.Count} type names of {assemblies} framework assemblies");
        var clashes = contract.Where(t => framework.Contains(SimpleName(t))).Select(t => $"{t.FullName} (collides with System's {SimpleName(t)})").ToList();
        Assert.True(clashes.Count == 0, "public contract types that a plugin with implicit usings cannot name unambiguously:\n" + string.Join("\n", clashes));
    }
}
