using OrtFinetune.Host.Plugins;

namespace OrtFinetune.Host.Tests;

public class PluginCatalogTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-plugins-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    string Drop(string folderName, string dllName)
    {
        var d = Directory.CreateDirectory(Path.Combine(_dir, folderName)).FullName;
        File.Copy(TestPaths.SamplePluginDll, Path.Combine(d, dllName + ".dll"));
        return d;
    }

    [Fact]
    public void SamplePluginLoadsFromAFolder()
    {
        Drop("OrtFinetune.Samples.CsvDataset", "OrtFinetune.Samples.CsvDataset");
        var c = PluginCatalog.Load([_dir]);
        var p = Assert.Single(c.Plugins);
        Assert.Null(p.Error);
        Assert.Contains("dataset csv", p.Provides);
        Assert.True(c.Datasets.ContainsKey("csv"));
    }

    [Fact]
    public void BrokenAndDuplicatePluginsAreReportedByNameAndTheRestLoad()
    {
        Drop("AGood", "AGood");
        Drop("BDuplicate", "BDuplicate");                       // same assembly again: claims "csv" a second time
        var broken = Directory.CreateDirectory(Path.Combine(_dir, "Broken")).FullName;
        File.WriteAllBytes(Path.Combine(broken, "Broken.dll"), "MZ this is not an assembly"u8.ToArray());
        Directory.CreateDirectory(Path.Combine(_dir, "Empty"));

        var c = PluginCatalog.Load([_dir]);
        Assert.Equal(4, c.Plugins.Count);
        Assert.Null(c.Plugins.Single(p => p.Name == "AGood").Error);
        Assert.Contains("dataset 'csv' is already provided by plugin 'AGood'", c.Plugins.Single(p => p.Name == "BDuplicate").Error);
        Assert.Contains("BadImageFormatException", c.Plugins.Single(p => p.Name == "Broken").Error);
        Assert.Contains("has no Empty.dll", c.Plugins.Single(p => p.Name == "Empty").Error);
        Assert.Equal("AGood", c.Datasets["csv"].Plugin);
    }

    [Fact]
    public void PluginsLoadOnlyFromTheConfiguredFolders()
    {
        Drop("OrtFinetune.Samples.CsvDataset", "OrtFinetune.Samples.CsvDataset");
        var other = Directory.CreateTempSubdirectory("ortfinetune-empty-").FullName;
        try { Assert.Empty(PluginCatalog.Load([other]).Plugins); }
        finally { Directory.Delete(other, true); }
    }
}
