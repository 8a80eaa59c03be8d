using System.Buffers.Binary;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

public class IdxTests
{
    private static DatasetSplits Open(string dir, int seed = 1, double val = 0.1, int limit = 0) =>
        new MnistProvider().Open(new DatasetRequest { DataDir = dir, Seed = seed, ValidationFraction = val, Limit = limit });

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReadsValidFiles(bool gzip)
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path, 20, 10, gzip);
        var s = Open(t.Path, val: 0.25);
        Assert.Equal(15, s.Train.Count);
        Assert.Equal(5, s.Validation.Count);
        Assert.Equal(10, s.Test.Count);
        Assert.Equal(10, s.Train.ClassNames.Count);
        var x = s.Test.Get(3);
        Assert.Equal((3, 4, 1), (x.Width, x.Height, x.Channels));
        Assert.Null(s.NativeImageSize);   // 3x4: not square, so no native size for the host's automatic image size
        Assert.Equal(9 - 3, x.Label);
        Assert.Equal(Enumerable.Range(0, 12).Select(p => (byte)(200 - 3 - p)), x.Pixels);
        Assert.Contains("t10k-images-idx3-ubyte", x.Source);
        // Train and validation partition the training file.
        var all = Enumerable.Range(0, s.Train.Count).Select(i => s.Train.Get(i).Pixels[0])
            .Concat(Enumerable.Range(0, s.Validation.Count).Select(i => s.Validation.Get(i).Pixels[0])).OrderBy(v => v);
        Assert.Equal(Enumerable.Range(0, 20).Select(i => (byte)(i * 7)).OrderBy(v => v), all);
    }

    [Fact]
    public void SplitsAreDeterministicFromSeed()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path, 50, 10);
        string Val(int seed) { var s = Open(t.Path, seed, 0.2); return string.Join(",", Enumerable.Range(0, s.Validation.Count).Select(i => s.Validation.Get(i).Pixels[0])); }
        Assert.Equal(Val(5), Val(5));
        Assert.NotEqual(Val(5), Val(6));
    }

    [Fact]
    public void LimitCapsEachSplit()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path, 50, 10);
        var s = Open(t.Path, limit: 4, val: 0.2);
        Assert.Equal(4, s.Train.Count); Assert.Equal(4, s.Validation.Count); Assert.Equal(4, s.Test.Count);
    }

    private static DatasetException Fails(string dir) => Assert.Throws<DatasetException>(() => Open(dir));

    [Fact]
    public void WrongMagicIsNamed()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path);
        var f = t["train-images-idx3-ubyte"];
        var b = File.ReadAllBytes(f); b[0] = 0x50; b[1] = 0x4B; File.WriteAllBytes(f, b);
        var e = Fails(t.Path);
        Assert.Contains("train-images-idx3-ubyte", e.Message);
        Assert.Contains("not an IDX file", e.Message);
    }

    [Fact]
    public void WrongTypeAndRank()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path);
        var f = t["train-images-idx3-ubyte"];
        var b = File.ReadAllBytes(f); b[2] = 0x0D; File.WriteAllBytes(f, b);
        Assert.Contains("element type", Fails(t.Path).Message);
        b[2] = 8; b[3] = 2; File.WriteAllBytes(f, b);
        Assert.Contains("rank 2", Fails(t.Path).Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TruncatedIsNamed(bool gzip)
    {
        using var t = new TempDir();
        var data = Idx.Images(10, 4, 3)[..^5];
        File.WriteAllBytes(t["x"], gzip ? Idx.Gzip(data) : data);
        var e = Assert.Throws<DatasetException>(() => IdxReader.Read(t["x"], 3));
        Assert.Contains("truncated", e.Message);
        Assert.Contains(t["x"], e.Message);
        File.WriteAllBytes(t["y"], new byte[] { 0, 0, 8, 3, 0, 0 });
        Assert.Contains("truncated", Assert.Throws<DatasetException>(() => IdxReader.Read(t["y"], 3)).Message);
        File.WriteAllBytes(t["z"], Array.Empty<byte>());
        Assert.Contains("truncated", Assert.Throws<DatasetException>(() => IdxReader.Read(t["z"], 3)).Message);
    }

    [Fact]
    public void TrailingBytesAreRejected()
    {
        using var t = new TempDir();
        File.WriteAllBytes(t["x"], Idx.Images(10, 4, 3).Concat(new byte[3]).ToArray());
        Assert.Contains("unexpected bytes", Assert.Throws<DatasetException>(() => IdxReader.Read(t["x"], 3)).Message);
    }

    [Fact]
    public void CountMismatchBetweenImagesAndLabels()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path, 20, 10);
        File.WriteAllBytes(t["train-labels-idx1-ubyte"], Idx.Labels(19));
        var e = Fails(t.Path);
        Assert.Contains("train-labels-idx1-ubyte", e.Message);
        Assert.Contains("19 labels", e.Message);
        Assert.Contains("20 images", e.Message);
    }

    [Fact]
    public void LabelOutOfRange()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path, 20, 10);
        File.WriteAllBytes(t["t10k-labels-idx1-ubyte"], Idx.Labels(10, i => (byte)(i == 7 ? 10 : 1)));
        var e = Fails(t.Path);
        Assert.Contains("label 10 of record 7", e.Message);
    }

    [Fact]
    public void MissingFileIsNamed()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path);
        File.Delete(t["t10k-labels-idx1-ubyte"]);
        var e = Fails(t.Path);
        Assert.Contains("t10k-labels-idx1-ubyte", e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void HugeDeclaredCountDoesNotAllocate(bool gzip)
    {
        using var t = new TempDir();
        var b = Idx.Images(2, 28, 28);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4), 2_000_000); // 1.5 GB declared
        File.WriteAllBytes(t["x"], gzip ? Idx.Gzip(b) : b);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<DatasetException>(() => IdxReader.Read(t["x"], 3));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Contains("truncated", e.Message);
        Assert.True(allocated < 8 << 20, $"allocated {allocated} bytes");
        // Beyond what a byte array can hold: refused from the header alone.
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4), int.MaxValue);
        File.WriteAllBytes(t["y"], b);
        Assert.Contains("more than", Assert.Throws<DatasetException>(() => IdxReader.Read(t["y"], 3)).Message);
    }

    [Fact]
    public void CorruptGzipIsDatasetException()
    {
        using var t = new TempDir();
        var gz = Idx.Gzip(Idx.Images(50, 28, 28, (i, p) => (byte)((i * 131 + p * 17) % 251)));
        for (int i = 20; i < gz.Length - 10; i += 7) gz[i] ^= 0x5A;
        File.WriteAllBytes(t["x.gz"], gz);
        var e = Assert.Throws<DatasetException>(() => IdxReader.Read(t["x.gz"], 3));
        Assert.Contains("x.gz", e.Message);
    }

    [Fact]
    public void AcceptsDottedFileNames()
    {
        using var t = new TempDir();
        Idx.WriteSet(t.Path, 20, 10);
        foreach (var f in Directory.GetFiles(t.Path))
            File.Move(f, f.Replace("-idx", ".idx"));
        Assert.Equal(10, Open(t.Path).Test.Count);
    }
}
