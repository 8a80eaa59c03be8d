using System.Buffers.Binary;
using OrtFinetune.Abstractions;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace OrtFinetune.Plugins.Datasets.Tests;

public class ImageFolderTests
{
    private static void Save(string path, int w, int h, byte r, byte g, byte b, bool gray = false)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        if (gray)
        {
            using var gi = new Image<L8>(w, h);
            for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) gi[x, y] = new L8(r);
            gi.Save(path);
            return;
        }
        using var img = new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) img[x, y] = new Rgb24(r, g, (byte)(b + x));
        img.Save(path); // format from the extension
    }

    private static DatasetSplits Open(string dir, BadSamplePolicy policy = BadSamplePolicy.Stop, ListLogger? log = null,
        Dictionary<string, string>? settings = null, double val = 0.2) =>
        new ImageFolderProvider().Open(new DatasetRequest
        {
            DataDir = dir, Seed = 1, ValidationFraction = val, OnBadSample = policy, Logger = log,
            Settings = settings ?? new Dictionary<string, string>(),
        });

    private static void MakeClasses(string root, int perClass = 5)
    {
        string[] ext = { "png", "jpg", "bmp", "gif", "webp" };
        for (int i = 0; i < perClass; i++)
        {
            Save(Path.Combine(root, "cat", $"c{i}.{ext[i % ext.Length]}"), 8 + i, 6, 200, 10, 10);
            Save(Path.Combine(root, "dog", $"d{i}.png"), 5, 7 + i, 10, 200, 10);
        }
    }

    [Fact]
    public void ReadsClassFoldersAndCarvesSplits()
    {
        using var t = new TempDir();
        MakeClasses(t.Path, 10);
        File.WriteAllText(t["cat/readme.txt"], "not an image");
        var s = Open(t.Path, settings: new() { ["test-fraction"] = "0.1" });
        Assert.Equal(new[] { "cat", "dog" }, s.Train.ClassNames);
        Assert.Null(s.NativeImageSize);   // files of any size
        Assert.Equal(20, s.Train.Count + s.Validation.Count + s.Test.Count);
        Assert.Equal(2, s.Test.Count);
        Assert.Equal(4, s.Validation.Count);
        for (int i = 0; i < s.Train.Count; i++)
        {
            var x = s.Train.Get(i);
            Assert.Equal(3, x.Channels);
            Assert.Equal(x.Width * x.Height * 3, x.Pixels.Length);
            if (x.Source.EndsWith(".png") || x.Source.EndsWith(".bmp"))
                Assert.Equal(x.Label == 0 ? (byte)200 : (byte)10, x.Pixels[0]); // lossless formats keep exact colours
        }
    }

    [Fact]
    public void UsesSplitFoldersAndConvertsGrayToRgb()
    {
        using var t = new TempDir();
        MakeClasses(t["train"], 3);
        Save(t["val/dog/v.png"], 4, 4, 50, 0, 0, gray: true);
        Save(t["test/cat/t.png"], 4, 4, 1, 2, 3);
        var s = Open(t.Path);
        Assert.Equal(6, s.Train.Count);
        Assert.Equal(1, s.Validation.Count);
        Assert.Equal(1, s.Test.Count);
        var v = s.Validation.Get(0);
        Assert.Equal(1, v.Label);
        Assert.Equal(3, v.Channels);
        Assert.All(v.Pixels, p => Assert.Equal(50, p));
    }

    [Fact]
    public void UnknownClassInValidationFolder()
    {
        using var t = new TempDir();
        MakeClasses(t["train"], 2);
        Save(t["val/horse/v.png"], 4, 4, 50, 0, 0);
        var e = Assert.Throws<DatasetException>(() => Open(t.Path));
        Assert.Contains("horse", e.Message);
    }

    [Fact]
    public void CorruptAndEmptyFilesStopOrAreSkipped()
    {
        using var t = new TempDir();
        MakeClasses(t.Path, 4);
        File.WriteAllBytes(t["cat/zero.png"], Array.Empty<byte>());
        File.WriteAllBytes(t["dog/noise.jpg"], Enumerable.Range(0, 500).Select(i => (byte)(i * 37)).ToArray());
        var e = Assert.Throws<DatasetException>(() => Open(t.Path));
        Assert.Contains("zero.png", e.Message); // first in file order
        Assert.Contains("empty", e.Message);

        var log = new ListLogger();
        var s = Open(t.Path, BadSamplePolicy.Skip, log, val: 0);
        Assert.Equal(8, s.Train.Count + s.Test.Count);
        var warning = Assert.Single(log.Messages);
        Assert.Contains("skipped 2", warning);
        Assert.Contains("zero.png", warning);
        Assert.Contains("noise.jpg", warning);
    }

    [Fact]
    public void CorruptImageDataIsNamedAtDecode()
    {
        using var t = new TempDir();
        MakeClasses(t.Path, 2);
        // A valid PNG header whose pixel data is cut off: passes the header check, fails at decode.
        Save(t["cat/big.png"], 64, 64, 1, 2, 3);
        var bytes = File.ReadAllBytes(t["cat/big.png"]);
        File.WriteAllBytes(t["cat/big.png"], bytes[..60]);
        var s = Open(t.Path, val: 0, settings: new() { ["test-fraction"] = "0" });
        var ds = s.Train;
        int idx = Enumerable.Range(0, ds.Count).First(i => ((FolderDataset)((SubsetDataset)((SubsetDataset)ds).Inner).Inner).PathOf(((SubsetDataset)((SubsetDataset)ds).Inner).Indices[((SubsetDataset)ds).Indices[i]]).EndsWith("big.png"));
        var e = Assert.Throws<DatasetException>(() => ds.Get(idx));
        Assert.Contains("big.png", e.Message);

        // verify=full finds it at Open.
        var e2 = Assert.Throws<DatasetException>(() => Open(t.Path, settings: new() { ["verify"] = "full" }));
        Assert.Contains("big.png", e2.Message);
    }

    /// <summary>A PNG whose header claims width x height, with a tiny (invalid for that size) IDAT.</summary>
    public static byte[] PngClaiming(int width, int height)
    {
        var ms = new MemoryStream();
        ms.Write(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A });
        void Chunk(string type, byte[] data)
        {
            Span<byte> len = stackalloc byte[4];
            BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
            ms.Write(len);
            var td = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
            ms.Write(td);
            BinaryPrimitives.WriteUInt32BigEndian(len, Crc32(td));
            ms.Write(len);
        }
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
        Chunk("IHDR", ihdr);
        Chunk("IDAT", new byte[] { 0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01 });
        Chunk("IEND", Array.Empty<byte>());
        return ms.ToArray();
    }

    private static uint Crc32(byte[] data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    [Fact]
    public void HugeDeclaredDimensionsAreRefusedBeforeDecoding()
    {
        using var t = new TempDir();
        MakeClasses(t.Path, 2);
        File.WriteAllBytes(t["dog/huge.png"], PngClaiming(100000, 100000));
        var dec = new ImageDecoding();
        Assert.Equal((100000, 100000), SixLabors.ImageSharp.Image.Identify(t["dog/huge.png"]) is { } info ? (info.Width, info.Height) : (0, 0));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<DatasetException>(() => dec.Decode(t["dog/huge.png"], 0));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 16 << 20);
        Assert.Contains("huge.png", e.Message);
        Assert.Contains("refused before decoding", e.Message);
        var e2 = Assert.Throws<DatasetException>(() => Open(t.Path));
        Assert.Contains("huge.png", e2.Message);
        // A lower configurable limit applies too.
        Save(t["dog/mid.png"], 100, 100, 0, 0, 0);
        File.Delete(t["dog/huge.png"]);
        Assert.Contains("mid.png", Assert.Throws<DatasetException>(() => Open(t.Path, settings: new() { ["max-pixels"] = "5000" })).Message);
    }

    [Fact]
    public void EmptyRootAndMissingFolder()
    {
        using var t = new TempDir();
        Assert.Contains("no class folders", Assert.Throws<DatasetException>(() => Open(t.Path)).Message);
        Assert.Contains("not found", Assert.Throws<DatasetException>(() => Open(t["nope"])).Message);
        Assert.Throws<DatasetException>(() => new ImageFolderProvider().Open(new DatasetRequest()));
    }
}
