using System.Collections.Concurrent;
using System.Diagnostics;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Training.Data;

public sealed record DataLoaderOptions
{
    public int BatchSize { get; init; } = 32;
    public bool Shuffle { get; init; } = true;
    /// <summary>Drop the last incomplete batch of an epoch.</summary>
    public bool DropLast { get; init; }
    public int Seed { get; init; }
    /// <summary>Threads decoding and transforming samples (default: min(processors, 4)).</summary>
    public int Workers { get; init; } = Math.Clamp(Environment.ProcessorCount, 1, 4);
    /// <summary>Batches prepared ahead of the consumer.</summary>
    public int Prefetch { get; init; } = 3;
    /// <summary>
    /// Recycle batch buffers: a yielded batch stays valid only until the next one is requested (Clone() it to keep it).
    /// Off: every batch has its own arrays.
    /// </summary>
    public bool ReuseBuffers { get; init; } = true;
    /// <summary>
    /// Data-parallel shard (torch's DistributedSampler): rank r of <see cref="WorldSize"/> takes positions r, r + W,
    /// r + 2W, ... of the epoch's order, so each sample is seen once per epoch across the ranks. With
    /// <see cref="PadShards"/> the order is first padded to a multiple of W by repeating its start, so every rank has
    /// the same number of samples (needed for training: the ranks step together).
    /// </summary>
    public int Rank { get; init; }
    public int WorldSize { get; init; } = 1;
    public bool PadShards { get; init; } = true;
}

/// <summary>One batch: Images is N x C x H x W (N = BatchSize; rows past Count are zero), Labels has N entries.</summary>
public sealed class Batch
{
    internal Batch(int batchSize, int sampleLength)
    {
        Images = new float[(long)batchSize * sampleLength];
        Labels = new long[batchSize];
        SampleIndices = new int[batchSize];
    }

    public float[] Images { get; }
    public long[] Labels { get; }
    /// <summary>Samples in this batch (the last batch of an epoch may be smaller than the batch size).</summary>
    public int Count { get; internal set; }
    public int Epoch { get; internal set; }
    /// <summary>Position of this batch in its epoch (0-based).</summary>
    public int Index { get; internal set; }
    /// <summary>Dataset index of each sample.</summary>
    public int[] SampleIndices { get; }

    public void Deconstruct(out float[] images, out long[] labels, out int count) { images = Images; labels = Labels; count = Count; }

    public Batch Clone()
    {
        var b = new Batch(Labels.Length, Labels.Length == 0 ? 0 : Images.Length / Labels.Length) { Count = Count, Epoch = Epoch, Index = Index };
        Images.CopyTo(b.Images, 0); Labels.CopyTo(b.Labels, 0); SampleIndices.CopyTo(b.SampleIndices, 0);
        return b;
    }
}

/// <summary>A sample could not be loaded or transformed; the message names the sample's index and source.</summary>
public sealed class DataLoaderException : DatasetException
{
    public DataLoaderException(string message, Exception? inner = null) : base(message, inner) { }
    public int SampleIndex { get; init; }
}

/// <summary>Cumulative loader statistics.</summary>
public readonly record struct LoaderStats(long Batches, long Samples, TimeSpan WaitTime, TimeSpan ProduceTime)
{
    /// <summary>Average time the consumer waited per batch.</summary>
    public TimeSpan WaitPerBatch => Batches == 0 ? TimeSpan.Zero : WaitTime / Batches;
}

/// <summary>
/// Batches an <see cref="IImageDataset"/> through a <see cref="TransformPipeline"/>. Each epoch visits the samples in a
/// permutation determined by (seed, epoch); each sample's augmentation by (seed, epoch, sample index). Worker threads
/// decode and transform ahead of the consumer, up to <see cref="DataLoaderOptions.Prefetch"/> batches. An epoch can
/// start at any batch (exact resume); the batches from there on equal those of an uninterrupted epoch.
/// </summary>
public sealed class DataLoader
{
    private readonly IImageDataset _dataset;
    private readonly TransformPipeline _pipeline;
    private long _batches, _samples, _waitTicks, _produceTicks;

    public DataLoader(IImageDataset dataset, TransformPipeline pipeline, DataLoaderOptions options)
    {
        _dataset = dataset ?? throw new ArgumentNullException(nameof(dataset));
        _pipeline = pipeline ?? throw new ArgumentNullException(nameof(pipeline));
        Options = options ?? throw new ArgumentNullException(nameof(options));
        if (options.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(options), "BatchSize must be >= 1");
        if (options.Workers < 1) throw new ArgumentOutOfRangeException(nameof(options), "Workers must be >= 1");
        if (options.Prefetch < 1) throw new ArgumentOutOfRangeException(nameof(options), "Prefetch must be >= 1");
        if (options.WorldSize < 1 || options.Rank < 0 || options.Rank >= options.WorldSize)
            throw new ArgumentOutOfRangeException(nameof(options), $"rank {options.Rank} of {options.WorldSize} is not a valid shard");
    }

    public DataLoaderOptions Options { get; }
    public IImageDataset Dataset => _dataset;
    public TransformPipeline Pipeline => _pipeline;
    public int BatchSize => Options.BatchSize;

    /// <summary>Samples this rank visits per epoch.</summary>
    public int ShardCount => Options.WorldSize == 1 ? _dataset.Count
        : Options.PadShards ? (_dataset.Count + Options.WorldSize - 1) / Options.WorldSize
        : (_dataset.Count - Options.Rank + Options.WorldSize - 1) / Options.WorldSize;

    public int BatchesPerEpoch => Options.DropLast
        ? ShardCount / Options.BatchSize
        : (ShardCount + Options.BatchSize - 1) / Options.BatchSize;

    public LoaderStats Stats => new(Interlocked.Read(ref _batches), Interlocked.Read(ref _samples),
        TimeSpan.FromTicks(Interlocked.Read(ref _waitTicks)), TimeSpan.FromTicks(Interlocked.Read(ref _produceTicks)));

    public void ResetStats()
    {
        Interlocked.Exchange(ref _batches, 0); Interlocked.Exchange(ref _samples, 0);
        Interlocked.Exchange(ref _waitTicks, 0); Interlocked.Exchange(ref _produceTicks, 0);
    }

    /// <summary>The order in which this rank visits the dataset in an epoch (all of it with one rank).</summary>
    public int[] EpochOrder(int epoch)
    {
        int n = _dataset.Count;
        int[] order;
        if (!Options.Shuffle) { order = new int[n]; for (int i = 0; i < n; i++) order[i] = i; }
        else order = SplitMix64.Permutation(n, SplitMix64.Hash(Options.Seed, epoch, 0x5045524D, 0));
        int w = Options.WorldSize;
        if (w == 1) return order;
        var shard = new int[ShardCount];
        for (int i = 0; i < shard.Length; i++) shard[i] = order[(Options.Rank + (long)i * w) % n];   // past n: the padding wraps to the start
        return shard;
    }

    /// <summary>Transforms one sample exactly as the loader would in the given epoch.</summary>
    public void LoadSample(int datasetIndex, int epoch, Span<float> dest, out long label)
    {
        ImageSample sample;
        try { sample = _dataset.Get(datasetIndex); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new DataLoaderException($"{_dataset.Name}: sample {datasetIndex} could not be read: {e.Message}", e) { SampleIndex = datasetIndex };
        }
        int classes = _dataset.ClassNames.Count;
        if (sample.Label < 0 || (classes > 0 && sample.Label >= classes))
            throw new DataLoaderException($"{_dataset.Name}: sample {datasetIndex} ({sample.Source}) has label {sample.Label}, outside 0..{classes - 1}") { SampleIndex = datasetIndex };
        try { _pipeline.Apply(sample, Options.Seed, epoch, datasetIndex, dest); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new DataLoaderException($"{_dataset.Name}: sample {datasetIndex} ({sample.Source}) could not be transformed: {e.Message}", e) { SampleIndex = datasetIndex };
        }
        label = sample.Label;
    }

    /// <summary>
    /// The batches of one epoch from <paramref name="startBatch"/> on. With ReuseBuffers a batch is valid until the
    /// next is requested. Stopping the enumeration early (break, dispose) stops the workers.
    /// </summary>
    public IEnumerable<Batch> Epoch(int epoch, int startBatch = 0, CancellationToken cancellationToken = default)
    {
        int total = BatchesPerEpoch;
        if (startBatch < 0 || startBatch > total) throw new ArgumentOutOfRangeException(nameof(startBatch), $"epoch has {total} batches, cannot start at {startBatch}");
        return Run(epoch, startBatch, total, cancellationToken);
    }

    private IEnumerable<Batch> Run(int epoch, int startBatch, int total, CancellationToken ct)
    {
        if (startBatch == total) yield break;
        int bs = Options.BatchSize, sampleLen = _pipeline.SampleLength;
        int[] order = EpochOrder(epoch);
        int prefetch = Options.Prefetch;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var token = cts.Token;
        using var ready = new BlockingCollection<Batch>(prefetch);
        using var free = new BlockingCollection<Batch>();
        if (Options.ReuseBuffers)
            for (int i = 0; i < prefetch + 2; i++) free.Add(new Batch(bs, sampleLen));
        Exception? failure = null;

        var producer = Task.Factory.StartNew(() =>
        {
            try
            {
                var po = new ParallelOptions { MaxDegreeOfParallelism = Options.Workers, CancellationToken = token };
                for (int b = startBatch; b < total; b++)
                {
                    var batch = Options.ReuseBuffers ? free.Take(token) : new Batch(bs, sampleLen);
                    long t0 = Stopwatch.GetTimestamp();
                    int first = b * bs;
                    int count = Math.Min(bs, order.Length - first);
                    batch.Count = count; batch.Epoch = epoch; batch.Index = b;
                    try
                    {
                        Parallel.For(0, count, po, j =>
                        {
                            int idx = order[first + j];
                            batch.SampleIndices[j] = idx;
                            LoadSample(idx, epoch, batch.Images.AsSpan(j * sampleLen, sampleLen), out batch.Labels[j]);
                        });
                    }
                    catch (AggregateException ae)
                    {
                        // Report the failing sample earliest in the batch, independent of scheduling.
                        var inner = ae.Flatten().InnerExceptions;
                        var dl = inner.OfType<DataLoaderException>().OrderBy(e => Array.IndexOf(order, e.SampleIndex, first, count)).FirstOrDefault();
                        throw dl ?? inner[0];
                    }
                    if (count < bs)
                    {
                        batch.Images.AsSpan(count * sampleLen).Clear();
                        batch.Labels.AsSpan(count).Clear();
                        batch.SampleIndices.AsSpan(count).Fill(-1);
                    }
                    Interlocked.Add(ref _produceTicks, TicksSince(t0));
                    ready.Add(batch, token);
                }
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested) { }
            catch (Exception e) { failure = e; }
            finally { ready.CompleteAdding(); }
        }, token, TaskCreationOptions.LongRunning, TaskScheduler.Default);

        Batch? previous = null;
        try
        {
            while (true)
            {
                if (previous is not null && Options.ReuseBuffers) free.Add(previous);
                previous = null;
                long t0 = Stopwatch.GetTimestamp();
                bool got;
                Batch? batch;
                try { got = ready.TryTake(out batch, Timeout.Infinite, token); }
                catch (OperationCanceledException) { ct.ThrowIfCancellationRequested(); throw; }
                Interlocked.Add(ref _waitTicks, TicksSince(t0));
                if (!got)
                {
                    producer.Wait(CancellationToken.None);
                    if (failure is not null)
                        throw failure is DataLoaderException dle
                            ? new DataLoaderException(dle.Message, dle) { SampleIndex = dle.SampleIndex }
                            : new DataLoaderException($"{_dataset.Name}: data loader failed: {failure.Message}", failure);
                    ct.ThrowIfCancellationRequested();
                    yield break;
                }
                Interlocked.Increment(ref _batches);
                Interlocked.Add(ref _samples, batch!.Count);
                previous = batch;
                yield return batch;
            }
        }
        finally
        {
            cts.Cancel();
            try { producer.Wait(CancellationToken.None); } catch (AggregateException) { }
        }
    }

    private static long TicksSince(long t0) =>
        (long)((Stopwatch.GetTimestamp() - t0) * (double)TimeSpan.TicksPerSecond / Stopwatch.Frequency);
}
