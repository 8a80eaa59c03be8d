using System.Buffers.Binary;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
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

/// <summary>
/// A plugin built against another version of the contracts: the sample plugin with its assembly reference to
/// OrtFinetune.Abstractions rewritten in its metadata (the AssemblyRef row's version fields), exactly what a
/// build against that version of the package records.
/// </summary>
public class PluginContractVersionTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-contracts-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    static readonly Version Host = typeof(OrtFinetune.Abstractions.IPlugin).Assembly.GetName().Version!;

    string DropWithContractVersion(string name, Version v)
    {
        var d = Directory.CreateDirectory(Path.Combine(_dir, name)).FullName;
        var dll = Path.Combine(d, name + ".dll");
        File.WriteAllBytes(dll, WithAbstractionsReference(File.ReadAllBytes(TestPaths.SamplePluginDll), v));
        return dll;
    }

    /// <summary>The assembly with its OrtFinetune.Abstractions reference set to <paramref name="v"/> (checked by reading it back).</summary>
    public static byte[] WithAbstractionsReference(byte[] bytes, Version v)
    {
        bytes = bytes.ToArray();
        using (var pe = new PEReader(new MemoryStream(bytes)))
        {
            var md = pe.GetMetadataReader();
            var h = md.AssemblyReferences.Single(h => md.GetString(md.GetAssemblyReference(h).Name) == "OrtFinetune.Abstractions");
            int row = MetadataTokens.GetRowNumber(h);
            var table = TableIndex.AssemblyRef;
            int at = pe.PEHeaders.MetadataStartOffset + md.GetTableMetadataOffset(table) + (row - 1) * md.GetTableRowSize(table);
            // ECMA-335 II.22.5: an AssemblyRef row starts with MajorVersion, MinorVersion, BuildNumber, RevisionNumber (2 bytes each).
            foreach (var (k, part) in new[] { v.Major, v.Minor, Math.Max(v.Build, 0), Math.Max(v.Revision, 0) }.Select((x, k) => (k, x)))
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(at + 2 * k), (ushort)part);
        }
        using var check = new PEReader(new MemoryStream(bytes));
        var cmd = check.GetMetadataReader();
        var patched = cmd.AssemblyReferences.Select(cmd.GetAssemblyReference).Single(r => cmd.GetString(r.Name) == "OrtFinetune.Abstractions");
        Assert.Equal(new Version(v.Major, v.Minor, Math.Max(v.Build, 0), Math.Max(v.Revision, 0)), patched.Version);
        return bytes;
    }

    [Fact]
    public void APluginBuiltAgainstAnotherMajorVersionIsRefusedNamingItAndBothVersions()
    {
        var other = new Version(Host.Major + 1, 0, 0);
        var dll = DropWithContractVersion("FromTheFuture", other);
        Directory.CreateDirectory(Path.Combine(_dir, "Good"));
        File.Copy(TestPaths.SamplePluginDll, Path.Combine(_dir, "Good", "Good.dll"));

        var c = PluginCatalog.Load([_dir]);
        var bad = c.Plugins.Single(p => p.Name == "FromTheFuture");
        Assert.NotNull(bad.Error);
        Assert.Contains("plugin 'FromTheFuture'", bad.Error);
        Assert.Contains(dll, bad.Error);
        Assert.Contains($"OrtFinetune.Abstractions {other.ToString(3)}", bad.Error);
        Assert.Contains($"OrtFinetune.Abstractions {Host.ToString(3)}", bad.Error);
        Assert.Contains("major versions differ", bad.Error);
        Assert.Empty(bad.Provides);
        // The other plugin still loads and provides the dataset.
        Assert.Null(c.Plugins.Single(p => p.Name == "Good").Error);
        Assert.Equal("Good", c.Datasets["csv"].Plugin);
    }

    [Fact]
    public void APluginBuiltAgainstAnOlderMajorVersionIsRefusedToo()
    {
        Assert.True(Host.Major >= 1, $"host contracts version {Host}");
        var dll = DropWithContractVersion("FromThePast", new Version(Host.Major - 1, 9, 0));
        var bad = Assert.Single(PluginCatalog.Load([_dir]).Plugins);
        Assert.Contains($"OrtFinetune.Abstractions {Host.Major - 1}.9.0", bad.Error);
        Assert.Contains("major versions differ", bad.Error);
    }

    [Fact]
    public void ANewerMinorVersionIsRefusedAndTheHostsOwnVersionLoads()
    {
        DropWithContractVersion("Newer", new Version(Host.Major, Host.Minor + 1, 0));
        DropWithContractVersion("Same", new Version(Host.Major, Host.Minor, Math.Max(Host.Build, 0)));
        var c = PluginCatalog.Load([_dir]);
        Assert.Contains($"newer than this ortfinetune's OrtFinetune.Abstractions {Host.ToString(3)}", c.Plugins.Single(p => p.Name == "Newer").Error);
        Assert.Null(c.Plugins.Single(p => p.Name == "Same").Error);
        Assert.Equal("Same", c.Datasets["csv"].Plugin);
    }
}
