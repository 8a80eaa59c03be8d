using System.Buffers.Binary;
using System.Diagnostics;
using OrtFinetune.Abstractions;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

/// <summary>
/// Seeded mutations of valid files (bit flips, truncations, length-field changes, appended bytes): every outcome
/// must be a correct read or a DatasetException — never another exception, a hang or a huge allocation.
/// </summary>
public class MutationTests
{
    private readonly ITestOutputHelper _out;
    public MutationTests(ITestOutputHelper output) { _out = output; }

    private const long MaxAllocation = 64L << 20;

    public static byte[] Mutate(byte[] seedFile, Random rng, int headerLength, out string what)
    {
        var b = (byte[])seedFile.Clone();
        switch (rng.Next(6))
        {
            case 0: // bit flips anywhere
            {
                int n = 1 + rng.Next(4);
                for (int i = 0; i < n; i++) { int p = rng.Next(b.Length); b[p] ^= (byte)(1 << rng.Next(8)); }
                what = $"{n} bit flips";
                return b;
            }
            case 1: // bit flip in the header
            {
                int p = rng.Next(Math.Min(headerLength, b.Length));
                b[p] ^= (byte)(1 << rng.Next(8));
                what = $"header bit flip at {p}";
                return b;
            }
            case 2: // truncation
            {
                int len = rng.Next(b.Length);
                what = $"truncated to {len}";
                return b[..len];
            }
            case 3: // a 32-bit field set to an interesting value
            {
                uint[] values = { 0, 1, 2, 27, 29, 255, 256, 65535, 1 << 20, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, (uint)rng.Next() };
                int field = rng.Next(Math.Max(1, Math.Min(headerLength, b.Length) / 4));
                uint v = values[rng.Next(values.Length)];
                if (b.Length >= field * 4 + 4) BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(field * 4), v);
                what = $"field {field} = {v}";
                return b;
            }
            case 4: // appended garbage
            {
                var extra = new byte[1 + rng.Next(5000)];
                rng.NextBytes(extra);
                what = $"{extra.Length} bytes appended";
                return b.Concat(extra).ToArray();
            }
            default: // random byte overwrite run
            {
                int p = rng.Next(b.Length), n = Math.Min(b.Length - p, 1 + rng.Next(64));
                for (int i = 0; i < n; i++) b[p + i] = (byte)rng.Next(256);
                what = $"{n} random bytes at {p}";
                return b;
            }
        }
    }

    private void RunCase(string label, Func<DatasetSplits> open, ref int ok, ref int rejected)
    {
        long allocated = 0;
        Exception? other = null;
        bool success = false;
        var thread = new Thread(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                var s = open();
                foreach (var ds in new[] { s.Train, s.Validation, s.Test })
                    for (int i = 0; i < ds.Count; i++)
                    {
                        var x = ds.Get(i);
                        if (x.Pixels.Length != x.Width * x.Height * x.Channels || x.Label < 0 || x.Label >= ds.ClassNames.Count)
                            throw new InvalidOperationException($"inconsistent sample {i}");
                    }
                success = true;
            }
            catch (DatasetException) { }
            catch (Exception e) { other = e; }
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        });
        thread.Start();
        Assert.True(thread.Join(TimeSpan.FromSeconds(20)), $"{label}: hung");
        Assert.True(other is null, $"{label}: {other}");
        Assert.True(allocated < MaxAllocation, $"{label}: allocated {allocated} bytes");
        if (success) ok++; else rejected++;
    }

    [Theory]
    [InlineData(false, 11)]
    [InlineData(true, 12)]
    public void IdxMutations(bool gzip, int seed)
    {
        using var t = new TempDir();
        var rng = new Random(seed);
        var files = new Dictionary<string, (byte[] Raw, int Header)>
        {
            ["train-images-idx3-ubyte"] = (Idx.Images(12, 28, 28), 16),
            ["train-labels-idx1-ubyte"] = (Idx.Labels(12), 8),
            ["t10k-images-idx3-ubyte"] = (Idx.Images(6, 28, 28), 16),
            ["t10k-labels-idx1-ubyte"] = (Idx.Labels(6), 8),
        };
        int ok = 0, rejected = 0;
        var sw = Stopwatch.StartNew();
        for (int iter = 0; iter < 300; iter++)
        {
            foreach (var f in Directory.GetFiles(t.Path)) File.Delete(f);
            var names = files.Keys.ToArray();
            string target = names[rng.Next(names.Length)];
            string what = "";
            foreach (var (name, (raw, header)) in files)
            {
                byte[] content = raw;
                if (name == target)
                {
                    if (gzip && rng.Next(2) == 0) { content = Mutate(Idx.Gzip(raw), rng, 32, out what); what = "gz " + what; }
                    else { content = Mutate(raw, rng, header, out what); if (gzip) content = Idx.Gzip(content); }
                }
                else if (gzip) content = Idx.Gzip(raw);
                File.WriteAllBytes(t[name + (gzip ? ".gz" : "")], content);
            }
            RunCase($"case {iter}: {target} {what}",
                () => new MnistProvider().Open(new DatasetRequest { DataDir = t.Path, Seed = iter }), ref ok, ref rejected);
        }
        _out.WriteLine($"gzip={gzip}: {ok} read, {rejected} rejected with DatasetException, {sw.ElapsedMilliseconds} ms");
        Assert.True(rejected > 100);
    }

    [Fact]
    public void CifarMutations()
    {
        using var t = new TempDir();
        var rng = new Random(21);
        var files = new Dictionary<string, byte[]>
        {
            ["data_batch_1.bin"] = Cifar.Batch(4),
            ["data_batch_2.bin"] = Cifar.Batch(3),
            ["test_batch.bin"] = Cifar.Batch(3),
            ["batches.meta.txt"] = System.Text.Encoding.ASCII.GetBytes(string.Join("\n", Cifar10Provider.DefaultClasses)),
        };
        int ok = 0, rejected = 0;
        for (int iter = 0; iter < 300; iter++)
        {
            foreach (var f in Directory.GetFiles(t.Path)) File.Delete(f);
            var names = files.Keys.ToArray();
            string target = names[rng.Next(names.Length)];
            string what = "";
            foreach (var (name, raw) in files)
                File.WriteAllBytes(t[name], name == target ? Mutate(raw, rng, 16, out what) : raw);
            RunCase($"case {iter}: {target} {what}",
                () => new Cifar10Provider().Open(new DatasetRequest { DataDir = t.Path, Seed = iter }), ref ok, ref rejected);
        }
        _out.WriteLine($"cifar10: {ok} read, {rejected} rejected with DatasetException");
        Assert.True(rejected > 50);
    }

    [Fact]
    public void ImageMutationsNeverEscapeAsOtherExceptions()
    {
        using var t = new TempDir();
        var rng = new Random(31);
        byte[] seedPng;
        using (var img = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(16, 16))
        {
            var ms = new MemoryStream();
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, ms);
            seedPng = ms.ToArray();
        }
        var dec = new ImageDecoding(maxPixels: 1 << 20);
        int ok = 0, rejected = 0;
        for (int iter = 0; iter < 200; iter++)
        {
            var path = t[$"m{iter}.png"];
            File.WriteAllBytes(path, Mutate(seedPng, rng, 33, out var what));
            long allocated = 0; Exception? other = null; bool success = false;
            var thread = new Thread(() =>
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                try { dec.Decode(path, 0); success = true; }
                catch (DatasetException) { }
                catch (Exception e) { other = e; }
                allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            });
            thread.Start();
            Assert.True(thread.Join(TimeSpan.FromSeconds(20)), $"{what}: hung");
            Assert.True(other is null, $"{what}: {other}");
            Assert.True(allocated < MaxAllocation, $"{what}: allocated {allocated}");
            if (success) ok++; else rejected++;
        }
        _out.WriteLine($"png: {ok} decoded, {rejected} rejected");
    }
}
