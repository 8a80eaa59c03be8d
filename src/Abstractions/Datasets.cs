using Microsoft.Extensions.Logging;

namespace OrtFinetune.Abstractions;

/// <summary>One decoded image: interleaved 8-bit pixels (height x width x channels, channels 1 or 3) and its label.</summary>
public sealed class ImageSample
{
    /// <summary>Width in pixels.</summary>
    public required int Width { get; init; }
    /// <summary>Height in pixels.</summary>
    public required int Height { get; init; }
    /// <summary>1 (grayscale) or 3 (RGB); the host converts to the model's channel count.</summary>
    public required int Channels { get; init; }
    /// <summary>HWC, row-major, 8 bits per channel.</summary>
    public required byte[] Pixels { get; init; }
    /// <summary>Class index into the dataset's <see cref="IImageDataset.ClassNames"/>.</summary>
    public required int Label { get; init; }
    /// <summary>Where it came from (file name, record index), for error messages.</summary>
    public string Source { get; init; } = "";
}

/// <summary>A labelled image collection with random access. Get may be called from several threads.</summary>
public interface IImageDataset
{
    /// <summary>A name for messages, e.g. "shapes/train".</summary>
    string Name { get; }
    /// <summary>Number of samples; indices are 0..Count-1.</summary>
    int Count { get; }
    /// <summary>Class names, indexed by <see cref="ImageSample.Label"/>; the same list in every split of a dataset.</summary>
    IReadOnlyList<string> ClassNames { get; }
    /// <summary>
    /// Sample <paramref name="index"/>, decoded. Must be deterministic (the same sample for the same index, so
    /// runs resume exactly) and thread-safe. A sample that cannot be read throws <see cref="DatasetException"/>
    /// naming its source.
    /// </summary>
    ImageSample Get(int index);
}

/// <summary>The three splits of a dataset, each already limited to <see cref="DatasetRequest.Limit"/> samples.</summary>
/// <param name="Train">Samples to train on.</param>
/// <param name="Validation">Samples evaluated after every epoch (held out of the training data when the dataset has no validation split).</param>
/// <param name="Test">Samples evaluated once at the end of the run.</param>
public sealed record DatasetSplits(IImageDataset Train, IImageDataset Validation, IImageDataset Test)
{
    /// <summary>
    /// The side in pixels of every image when all are square and of one size (28 for MNIST and Fashion-MNIST, 32 for
    /// CIFAR-10, shapes' image-size setting: 16 by default); null when unknown or varying. The host's automatic image size (<c>--image-size</c> left
    /// at 0) follows it for small images.
    /// </summary>
    public int? NativeImageSize { get; init; }

    /// <summary>
    /// Passes over the training split for a run that sets none (<c>--epochs</c> left at 0); null = the host's default (10).
    /// A procedural dataset chooses its size and this together, so that its default run has a known cost (shapes:
    /// 6 epochs of 14,400 images).
    /// </summary>
    public int? DefaultEpochs { get; init; }
}

/// <summary>What to do with a sample that cannot be read.</summary>
public enum BadSamplePolicy
{
    /// <summary>Stop the run with an error naming the sample.</summary>
    Stop,
    /// <summary>Skip the sample, log it, and go on.</summary>
    Skip,
}

/// <summary>What the host asks a <see cref="IDatasetProvider"/> to open (from the command line and settings).</summary>
public sealed record DatasetRequest
{
    /// <summary>Folder with the dataset's files; providers document what they expect there. Null: the provider's default location.</summary>
    public string? DataDir { get; init; }
    /// <summary>The run's seed (<c>--seed</c>): procedural data, shuffles and held-out splits must depend on it alone.</summary>
    public int Seed { get; init; }
    /// <summary>Fraction of the training data held out for validation when the dataset has no validation split.</summary>
    public double ValidationFraction { get; init; } = 0.1;
    /// <summary>Limit of samples per split (0 = all), for quick runs.</summary>
    public int Limit { get; init; }
    /// <summary>What the host does with an unreadable sample; a provider may consult it while indexing files.</summary>
    public BadSamplePolicy OnBadSample { get; init; } = BadSamplePolicy.Stop;
    /// <summary>Provider-specific settings (e.g. "image-size", "classes").</summary>
    public IReadOnlyDictionary<string, string> Settings { get; init; } = new Dictionary<string, string>();
    /// <summary>The host's logger, for warnings (e.g. skipped files); null when none.</summary>
    public ILogger? Logger { get; init; }
}

/// <summary>A dataset plugin: opens a named dataset's splits.</summary>
public interface IDatasetProvider
{
    /// <summary>The name used on the command line (--dataset NAME); lower-case, unique.</summary>
    string Name { get; }
    /// <summary>One line for <c>ortfinetune plugins</c>: what the data is and where it is read from.</summary>
    string Description { get; }
    /// <summary>
    /// Opens the splits. Missing or malformed files throw <see cref="DatasetException"/> naming the file;
    /// any other exception is reported by the host as a failure of this plugin.
    /// </summary>
    DatasetSplits Open(DatasetRequest request);
}

/// <summary>A dataset's files are missing or malformed; the message names the file and the problem.</summary>
public class DatasetException : Exception
{
    /// <summary>An error whose <paramref name="message"/> names the file and the problem.</summary>
    public DatasetException(string message, Exception? inner = null) : base(message, inner) { }
}
