using OrtFinetune.Abstractions;
using OrtFinetune.Host.Configuration;
using OrtFinetune.Training.Data;

namespace OrtFinetune.Host.Training;

/// <summary>
/// Batches from the prefetching <see cref="DataLoader"/>, with training or evaluation transforms; with several ranks,
/// this rank's shard (training: padded to equal shards; evaluation: each sample on exactly one rank).
/// </summary>
public sealed class LoaderBatchSource : IBatchSource
{
    readonly DataLoader _loader;

    public LoaderBatchSource(IImageDataset ds, ModelDefinition model, bool training, TrainSettings s, int rank = 0, int worldSize = 1)
    {
        int size = model.ImageSize;
        var eval = new TransformOptions { Size = size, ResizeShorter = size, Channels = model.Channels, Mean = model.Mean, Std = model.Std };
        // Small images (CIFAR, MNIST, shapes): pad-and-crop plus flips; large ones: ImageNet-style random resized crops.
        var crop = size >= 128 ? eval with { RandomResizedCrop = true } : eval with { RandomCropPadding = Math.Max(1, size / 8) };
        var train = s.Augment switch
        {
            "none" => eval,
            "flip" => eval with { HorizontalFlip = 0.5 },
            "crop" => crop,
            "crop-flip" => crop with { HorizontalFlip = 0.5 },
            _ => size >= 128 ? crop with { HorizontalFlip = 0.5 } : eval with { HorizontalFlip = 0.5 },
        };
        _loader = new DataLoader(ds, new TransformPipeline(training ? train : eval), new DataLoaderOptions
        {
            BatchSize = s.BatchSize, Shuffle = training, DropLast = training, Seed = s.Seed, Workers = s.Workers,
            Rank = rank, WorldSize = worldSize, PadShards = training,
        });
    }

    public int BatchesPerEpoch => _loader.BatchesPerEpoch;
    public double WaitSeconds => _loader.Stats.WaitTime.TotalSeconds;

    public IEnumerable<(float[] Images, long[] Labels, int Count)> Epoch(int epoch, int startBatch, CancellationToken ct)
    {
        foreach (var b in _loader.Epoch(epoch, startBatch, ct)) yield return (b.Images, b.Labels, b.Count);
    }
}
