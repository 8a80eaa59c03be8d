using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

public class CifarTests
{
    private static void WriteSet(string dir, int perBatch = 6, int batches = 2, int test = 5, bool meta = true)
    {
        for (int b = 1; b <= batches; b++) File.WriteAllBytes(Path.Combine(dir, $"data_batch_{b}.bin"), Cifar.Batch(perBatch, r => (byte)((r + b) % 10)));
        File.WriteAllBytes(Path.Combine(dir, "test_batch.bin"), Cifar.Batch(test));
        if (meta) File.WriteAllText(Path.Combine(dir, "batches.meta.txt"), string.Join("\n", Cifar10Provider.DefaultClasses.Select(c => c.ToUpperInvariant())) + "\n\n");
    }

    private static DatasetSplits Open(string dir, double val = 0.25) =>
        new Cifar10Provider().Open(new DatasetRequest { DataDir = dir, Seed = 3, ValidationFraction = val });

    [Fact]
    public void ReadsBatchesAndConvertsPlanarToInterleaved()
    {
        using var t = new TempDir();
        WriteSet(t.Path);
        var s = Open(t.Path);
        Assert.Equal(9, s.Train.Count);
        Assert.Equal(3, s.Validation.Count);
        Assert.Equal(5, s.Test.Count);
        Assert.Equal("AIRPLANE", s.Test.ClassNames[0]);
        Assert.Equal(32, s.NativeImageSize);
        var x = s.Test.Get(2);
        Assert.Equal((32, 32, 3, 2), (x.Width, x.Height, x.Channels, x.Label));
        // HWC: pixel p, channel c = (r * 31 + c * 80 + p) mod 256.
        for (int p = 0; p < 1024; p += 37)
            for (int c = 0; c < 3; c++)
                Assert.Equal((byte)(2 * 31 + c * 80 + p), x.Pixels[p * 3 + c]);
        Assert.Equal("test_batch.bin record 2", x.Source);
        var full = (InMemoryImageDataset)((SubsetDataset)s.Train).Inner;
        Assert.Equal(12, full.Count);
        Assert.Equal("data_batch_2.bin record 1", full.Get(7).Source);
        Assert.Equal((1 + 2) % 10, full.Get(7).Label);
    }

    [Fact]
    public void FindsSubfolderAndDefaultsClassNames()
    {
        using var t = new TempDir();
        var sub = Directory.CreateDirectory(t["cifar-10-batches-bin"]).FullName;
        WriteSet(sub, meta: false);
        var s = Open(t.Path);
        Assert.Equal("truck", s.Train.ClassNames[9]);
    }

    [Fact]
    public void TruncatedFileIsNamed()
    {
        using var t = new TempDir();
        WriteSet(t.Path);
        var f = t["data_batch_2.bin"];
        File.WriteAllBytes(f, File.ReadAllBytes(f)[..^100]);
        var e = Assert.Throws<DatasetException>(() => Open(t.Path));
        Assert.Contains("data_batch_2.bin", e.Message);
        Assert.Contains("not a multiple", e.Message);
    }

    [Fact]
    public void EmptyAndMissingFiles()
    {
        using var t = new TempDir();
        WriteSet(t.Path);
        File.WriteAllBytes(t["test_batch.bin"], Array.Empty<byte>());
        Assert.Contains("test_batch.bin: file is empty", Assert.Throws<DatasetException>(() => Open(t.Path)).Message);
        File.Delete(t["test_batch.bin"]);
        Assert.Contains("test_batch.bin: file not found", Assert.Throws<DatasetException>(() => Open(t.Path)).Message);
        File.Delete(t["data_batch_1.bin"]);
        Assert.Contains("data_batch_1.bin: file not found", Assert.Throws<DatasetException>(() => Open(t.Path)).Message);
    }

    [Fact]
    public void LabelOutOfRange()
    {
        using var t = new TempDir();
        WriteSet(t.Path);
        File.WriteAllBytes(t["data_batch_1.bin"], Cifar.Batch(4, r => (byte)(r == 3 ? 200 : 0)));
        var e = Assert.Throws<DatasetException>(() => Open(t.Path));
        Assert.Contains("data_batch_1.bin: label 200 of record 3", e.Message);
    }

    [Fact]
    public void MetaFileWithFewerClassesLimitsLabels()
    {
        using var t = new TempDir();
        WriteSet(t.Path);
        File.WriteAllText(t["batches.meta.txt"], "a\nb\n");
        Assert.Contains("out of range", Assert.Throws<DatasetException>(() => Open(t.Path)).Message);
        File.WriteAllText(t["batches.meta.txt"], "a\na\n");
        Assert.Contains("duplicate", Assert.Throws<DatasetException>(() => Open(t.Path)).Message);
    }
}
