using System.Diagnostics;
using OrtFinetune.Abstractions;
using OrtFinetune.Training.Data;

namespace OrtFinetune.Training.Tests.Data;

/// <summary>Sample i: a 4x4 grayscale image filled with i % 256 (and i / 256 in the first pixel), label i % 3.</summary>
internal sealed class CountingDataset : IImageDataset
{
    public CountingDataset(int count, Func<int, ImageSample?>? hook = null, int delayMs = 0) { Count = count; _hook = hook; _delay = delayMs; }
    private readonly Func<int, ImageSample?>? _hook;
    private readonly int _delay;
    public string Name => "counting";
    public int Count { get; }
    public IReadOnlyList<string> ClassNames { get; } = new[] { "a", "b", "c" };
    public ImageSample Get(int index)
    {
        if (_delay > 0) Thread.Sleep(_delay);
        if (_hook?.Invoke(index) is { } s) return s;
        var px = Enumerable.Repeat((byte)(index % 256), 16).ToArray();
        px[0] = (byte)(index / 256);
        return new ImageSample { Width = 4, Height = 4, Channels = 1, Pixels = px, Label = index % 3, Source = $"item-{index}" };
    }
}

public class DataLoaderTests
{
    private static readonly TransformPipeline Plain =
        new(new TransformOptions { Size = 4, Channels = 1, Mean = new[] { 0f }, Std = new[] { 1f / 255f } });

    private static int IndexOf(Batch b, int j) => (int)MathF.Round(b.Images[j * 16 + 0]) * 256 + (int)MathF.Round(b.Images[j * 16 + 5]);

    private static List<Batch> All(DataLoader l, int epoch, int start = 0) => l.Epoch(epoch, start).Select(b => b.Clone()).ToList();

    [Theory]
    [InlineData(100, 2)]   // divides evenly
    [InlineData(103, 2)]   // one padded sample
    [InlineData(103, 3)]
    [InlineData(5, 4)]
    public void RanksTogetherSeeEverySampleOncePerEpoch(int n, int world)
    {
        var opts = new DataLoaderOptions { BatchSize = 4, Seed = 7, WorldSize = world };
        var single = new DataLoader(new CountingDataset(n), Plain, opts with { WorldSize = 1 }).EpochOrder(3);
        var shards = Enumerable.Range(0, world).Select(r => new DataLoader(new CountingDataset(n), Plain, opts with { Rank = r })).ToList();
        int perRank = (n + world - 1) / world;
        var seen = new List<int>();
        for (int r = 0; r < world; r++)
        {
            var loader = shards[r];
            Assert.Equal(perRank, loader.ShardCount);   // equal shards: the ranks step together
            var got = loader.Epoch(3).SelectMany(b => Enumerable.Range(0, b.Count).Select(j => IndexOf(b, j))).ToList();
            Assert.Equal(loader.EpochOrder(3), got);
            // torch's DistributedSampler: rank r takes positions r, r + world, ... of the padded epoch order.
            Assert.Equal(Enumerable.Range(0, perRank).Select(i => single[(r + i * world) % n]), got);
            seen.AddRange(got);
        }
        // Every sample once; the padding repeats the first (perRank * world - n) samples of the epoch order.
        Assert.Equal(Enumerable.Range(0, n), seen.Distinct().Order());
        Assert.Equal(perRank * world - n, seen.Count - seen.Distinct().Count());
        Assert.Equal(single.Take(perRank * world - n).Order(), seen.GroupBy(i => i).Where(g => g.Count() > 1).Select(g => g.Key).Order());

        // Evaluation shards are not padded: every sample is counted on exactly one rank.
        var eval = Enumerable.Range(0, world).SelectMany(r => new DataLoader(new CountingDataset(n), Plain, opts with { Rank = r, Shuffle = false, PadShards = false })
            .Epoch(0).SelectMany(b => Enumerable.Range(0, b.Count).Select(j => IndexOf(b, j))).ToList()).ToList();
        Assert.Equal(Enumerable.Range(0, n), eval.Order());
        Assert.Throws<ArgumentOutOfRangeException>(() => new DataLoader(new CountingDataset(n), Plain, opts with { Rank = world }));
    }

    [Fact]
    public void VisitsEverySampleOncePerEpochInTheSeededOrder()
    {
        var l = new DataLoader(new CountingDataset(103), Plain, new DataLoaderOptions { BatchSize = 10, Seed = 4 });
        Assert.Equal(11, l.BatchesPerEpoch);
        var batches = All(l, 0);
        Assert.Equal(11, batches.Count);
        Assert.Equal(3, batches[^1].Count);
        var seen = batches.SelectMany(b => Enumerable.Range(0, b.Count).Select(j => IndexOf(b, j))).ToList();
        Assert.Equal(l.EpochOrder(0), seen);
        Assert.Equal(Enumerable.Range(0, 103), seen.OrderBy(i => i));
        foreach (var b in batches)
            for (int j = 0; j < b.Count; j++) { Assert.Equal(b.SampleIndices[j] % 3, b.Labels[j]); Assert.Equal(b.SampleIndices[j], IndexOf(b, j)); }
        Assert.All(batches[^1].Images.Skip(3 * 16), v => Assert.Equal(0f, v));
        Assert.NotEqual(Enumerable.Range(0, 103), seen);
    }

    [Fact]
    public void SameSeedSameBatchesOtherEpochOtherOrder()
    {
        var opts = new DataLoaderOptions { BatchSize = 8, Seed = 9 };
        var a = new DataLoader(new CountingDataset(64), Plain, opts);
        var b = new DataLoader(new CountingDataset(64), Plain, opts with { Workers = 1, Prefetch = 1 });
        var e0a = All(a, 0); var e0b = All(b, 0); var e1 = All(a, 1);
        for (int i = 0; i < 8; i++) { Assert.Equal(e0a[i].Images, e0b[i].Images); Assert.Equal(e0a[i].Labels, e0b[i].Labels); }
        Assert.NotEqual(e0a.SelectMany(x => x.SampleIndices), e1.SelectMany(x => x.SampleIndices));
        var c = new DataLoader(new CountingDataset(64), Plain, opts with { Seed = 10 });
        Assert.NotEqual(e0a.SelectMany(x => x.SampleIndices), All(c, 0).SelectMany(x => x.SampleIndices));
        var noShuffle = new DataLoader(new CountingDataset(64), Plain, opts with { Shuffle = false });
        Assert.Equal(Enumerable.Range(0, 64), All(noShuffle, 3).SelectMany(x => x.SampleIndices));
    }

    [Fact]
    public void ResumeAtBatchGivesTheSameRemainingBatchesWithAugmentation()
    {
        var ds = new CountingDataset(50, i => new ImageSample
        {
            Width = 12, Height = 9, Channels = 3, Label = i % 3, Source = $"img{i}",
            Pixels = Enumerable.Range(0, 12 * 9 * 3).Select(p => (byte)((p * 31 + i * 7) % 256)).ToArray(),
        });
        var pipe = new TransformPipeline(TransformOptions.Train(8));
        var l = new DataLoader(ds, pipe, new DataLoaderOptions { BatchSize = 6, Seed = 2, Workers = 2 });
        var full = All(l, 3);
        for (int k = 0; k <= l.BatchesPerEpoch; k++)
        {
            var rest = All(l, 3, k);
            Assert.Equal(full.Count - k, rest.Count);
            for (int i = 0; i < rest.Count; i++)
            {
                Assert.Equal(full[k + i].Index, rest[i].Index);
                Assert.Equal(full[k + i].Images, rest[i].Images);
                Assert.Equal(full[k + i].Labels, rest[i].Labels);
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => l.Epoch(0, l.BatchesPerEpoch + 1));
    }

    [Fact]
    public void DropLastAndReusedBuffers()
    {
        var l = new DataLoader(new CountingDataset(25), Plain, new DataLoaderOptions { BatchSize = 10, DropLast = true, Prefetch = 1 });
        Assert.Equal(2, l.BatchesPerEpoch);
        var objs = new HashSet<Batch>();
        int total = 0;
        for (int e = 0; e < 3; e++)
            foreach (var b in l.Epoch(e)) { objs.Add(b); total += b.Count; var (images, labels, count) = b; Assert.Equal(10, count); Assert.Equal(160, images.Length); Assert.Equal(10, labels.Length); }
        Assert.Equal(60, total);
        Assert.True(objs.Count <= 6);
        Assert.Equal(6, l.Stats.Batches);
        Assert.Equal(60, l.Stats.Samples);
    }

    [Fact]
    public void WorkerExceptionsNameTheSample()
    {
        var ds = new CountingDataset(40, i => i == 17 ? throw new DatasetException("/data/cat/17.png: cannot decode image") : null);
        var l = new DataLoader(ds, Plain, new DataLoaderOptions { BatchSize = 4, Seed = 1 });
        var e = Assert.Throws<DataLoaderException>(() => l.Epoch(0).Count());
        Assert.Contains("17.png", e.Message);
        Assert.Contains("sample 17", e.Message);
        Assert.Equal(17, e.SampleIndex);

        var bad = new CountingDataset(10, i => i == 3 ? new ImageSample { Width = 4, Height = 4, Channels = 1, Pixels = new byte[3], Label = 0, Source = "broken-record-3" } : null);
        var e2 = Assert.Throws<DataLoaderException>(() => new DataLoader(bad, Plain, new DataLoaderOptions { BatchSize = 4 }).Epoch(0).Count());
        Assert.Contains("broken-record-3", e2.Message);

        var badLabel = new CountingDataset(10, i => i == 5 ? new ImageSample { Width = 4, Height = 4, Channels = 1, Pixels = new byte[16], Label = 7, Source = "item-5" } : null);
        var e3 = Assert.Throws<DataLoaderException>(() => new DataLoader(badLabel, Plain, new DataLoaderOptions { BatchSize = 4 }).Epoch(0).Count());
        Assert.Contains("label 7", e3.Message);
    }

    [Fact]
    public void CancellationAndEarlyStopEndTheWorkers()
    {
        var l = new DataLoader(new CountingDataset(1000, delayMs: 2), Plain, new DataLoaderOptions { BatchSize = 10, Workers = 2 });
        using var cts = new CancellationTokenSource();
        int n = 0;
        var sw = Stopwatch.StartNew();
        Assert.ThrowsAny<OperationCanceledException>(() =>
        {
            foreach (var b in l.Epoch(0, 0, cts.Token)) { if (++n == 3) cts.Cancel(); }
        });
        Assert.Equal(3, n);
        foreach (var b in l.Epoch(1)) { if (b.Index == 1) break; }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        using var pre = new CancellationTokenSource();
        pre.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => l.Epoch(0, 0, pre.Token).Count());
    }

    [Fact]
    public void WaitTimeIsMeasured()
    {
        var slow = new DataLoader(new CountingDataset(40, delayMs: 5), Plain, new DataLoaderOptions { BatchSize = 10, Workers = 1 });
        _ = slow.Epoch(0).Count();
        Assert.True(slow.Stats.WaitTime > TimeSpan.FromMilliseconds(50), $"{slow.Stats.WaitTime}");
        Assert.Equal(4, slow.Stats.Batches);
        slow.ResetStats();
        Assert.Equal(TimeSpan.Zero, slow.Stats.WaitTime);
    }
}
