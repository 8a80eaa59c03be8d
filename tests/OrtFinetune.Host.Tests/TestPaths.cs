namespace OrtFinetune.Host.Tests;

public static class TestPaths
{
    public static string Root { get; } = FindRoot();
    static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "OrtFinetune.slnx"))) return d.FullName;
        throw new InvalidOperationException("repository root not found");
    }

    /// <summary>bin/&lt;Configuration&gt;/net10.0 of the test assembly, to find sibling build outputs.</summary>
    public static string Configuration => new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name;

    public static string SamplePluginDll => Path.Combine(Root, "samples", "CsvDataset", "bin", Configuration, "net10.0", "OrtFinetune.Samples.CsvDataset.dll");

    /// <summary>The host's own plugins folder (built-in plugins are published there by the host build).</summary>
    public static string BuiltInPlugins => Path.Combine(Root, "src", "Host", "bin", Configuration, "net10.0", "plugins");

    public static string HostDll => Path.Combine(AppContext.BaseDirectory, "ortfinetune.dll");
}
