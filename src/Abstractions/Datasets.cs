using Microsoft.Extensions.Logging;

namespace OrtFinetune.Abstractions;

/// <summary>One decoded image: interleaved 8-bit pixels (height x width x channels, channels 1 or 3) and its label.</summary>
public sealed class ImageSample
{
    public required int Width { get; init; }
    public required int Height { get; init; }
    public required int Channels { get; init; }
    /// <summary>HWC, row-major, 8 bits per channel.</summary>
    public required byte[] Pixels { get; init; }
    public required int Label { get; init; }
    /// <summary>Where it came from (file name, record index), for error messages.</summary>
    public string Source { get; init; } = "";
}

/// <summary>A labelled image collection with random access. Get may be called from several threads.</summary>
public interface IImageDataset
{
    string Name { get; }
    int Count { get; }
    IReadOnlyList<string> ClassNames { get; }
    ImageSample Get(int index);
}

public sealed record DatasetSplits(IImageDataset Train, IImageDataset Validation, IImageDataset Test)
{
    /// <summary>
    /// The side in pixels of every image when all are square and of one size (28 for MNIST and Fashion-MNIST, 32 for
    /// CIFAR-10 and shapes); null when unknown or varying. The host's automatic image size (<c>--image-size</c> left
    /// at 0) follows it for small images.
    /// </summary>
    public int? NativeImageSize { get; init; }

    /// <summary>
    /// Passes over the training split for a run that sets none (<c>--epochs</c> left at 0); null = the host's default (10).
    /// A procedural dataset chooses its size and this together, so that its default run has a known cost (shapes:
    /// 5 epochs of 14,400 images).
    /// </summary>
    public int? DefaultEpochs { get; init; }
}

/// <summary>What to do with a sample that cannot be read.</summary>
public enum BadSamplePolicy { Stop, Skip }

public sealed record DatasetRequest
{
    /// <summary>Folder with the dataset's files; providers document what they expect there. Null: the provider's default location.</summary>
    public string? DataDir { get; init; }
    public int Seed { get; init; }
    /// <summary>Fraction of the training data held out for validation when the dataset has no validation split.</summary>
    public double ValidationFraction { get; init; } = 0.1;
    /// <summary>Limit of samples per split (0 = all), for quick runs.</summary>
    public int Limit { get; init; }
    public BadSamplePolicy OnBadSample { get; init; } = BadSamplePolicy.Stop;
    /// <summary>Provider-specific settings (e.g. "image-size", "classes").</summary>
    public IReadOnlyDictionary<string, string> Settings { get; init; } = new Dictionary<string, string>();
    public ILogger? Logger { get; init; }
}

/// <summary>A dataset plugin: opens a named dataset's splits.</summary>
public interface IDatasetProvider
{
    /// <summary>The name used on the command line (--dataset NAME); lower-case, unique.</summary>
    string Name { get; }
    string Description { get; }
    DatasetSplits Open(DatasetRequest request);
}

/// <summary>A dataset's files are missing or malformed; the message names the file and the problem.</summary>
public class DatasetException : Exception
{
    public DatasetException(string message, Exception? inner = null) : base(message, inner) { }
}
