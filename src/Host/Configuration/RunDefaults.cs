using System.Globalization;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Host.Configuration;

/// <summary>
/// The settings whose default follows the data and the run, resolved once when the dataset is open and
/// before the model is built: the image size (<c>--image-size</c> 0), the epochs (<c>--epochs</c> 0), the
/// augmentation (<c>--augment auto</c>) and the warm-up (<c>--warmup-steps</c> empty). A value the user gave is
/// never changed. The resolved
/// settings are what the run uses and records (settings.json, summary.json), so <c>eval --run</c> and a
/// resumed run see the same numbers.
/// </summary>
public static class RunDefaults
{
    /// <summary>Square images up to this side are trained at their own size (MNIST 28, CIFAR-10 32).</summary>
    public const int SmallImage = 64;
    /// <summary>A native size that leaves fewer patches a side than this keeps the model's default (vit-b16 on 28 px would see 2x2 patches).</summary>
    public const int MinPatchesPerSide = 4;
    /// <summary>Epochs of a run when neither the user nor the dataset (<see cref="DatasetSplits.DefaultEpochs"/>) sets them.</summary>
    public const int DefaultEpochs = 10;
    /// <summary>
    /// Runs of at most this many epochs get no augmentation from auto: up to here it cost accuracy where measured
    /// (shapes, 10 epochs: flips -2.5 points; docs/benchmarks.md, "Defaults that follow the data").
    /// </summary>
    public const int ShortRunEpochs = 10;
    /// <summary>The automatic warm-up: this fraction of the run's optimizer steps ...</summary>
    public const double WarmupFraction = 0.05;
    /// <summary>... and at least this many (never more than the run has).</summary>
    public const int MinWarmupSteps = 5;

    /// <param name="Settings">A copy of the settings with every automatic value replaced by its resolved one.</param>
    /// <param name="Summary">One line naming each resolved value and why ("defaults from the data: image size 28 (...), ..."); null when nothing was automatic.</param>
    public sealed record Resolved(TrainSettings Settings, string? Summary);

    /// <param name="data">The open dataset: its training images, native image size and default epochs.</param>
    /// <param name="model">What the model plugin says about the architecture's input sizes (null: the model decides when it is built).</param>
    /// <param name="world">Data-parallel ranks: each trains on its shard (the split padded to a multiple of the ranks), so the run has that many fewer steps.</param>
    public static Resolved Resolve(TrainSettings s, DatasetSplits data, ModelInputSize? model, int world = 1) =>
        Resolve(s, model, (data.Train.Count + world - 1) / world, data.NativeImageSize, data.DefaultEpochs);

    /// <param name="trainImages">Images in the training split (the steps of the run follow from it).</param>
    /// <param name="nativeImageSize">The dataset's image side when all images share one square size (<see cref="DatasetSplits.NativeImageSize"/>).</param>
    /// <param name="datasetEpochs">The dataset's own epochs for a default run (<see cref="DatasetSplits.DefaultEpochs"/>).</param>
    public static Resolved Resolve(TrainSettings s, ModelInputSize? model, int trainImages, int? nativeImageSize = null, int? datasetEpochs = null)
    {
        var r = s.Clone();
        var parts = new List<string>();
        if (s.ImageSize == 0 && ImageSize(nativeImageSize, model, pretrained: s.Weights != null) is var (size, why))
        {
            r.ImageSize = size;
            parts.Add($"image size {size} ({why})");
        }
        if (s.Epochs == 0)
        {
            r.Epochs = datasetEpochs is > 0 ? datasetEpochs.Value : DefaultEpochs;
            parts.Add($"epochs {r.Epochs} ({(datasetEpochs is > 0 ? "the dataset's own" : "the default")})");
        }
        if (s.Augment == "auto")
        {
            // The image size the loader will see; 0 when the model decides it (then a long run keeps "auto", the loader's rule).
            bool shortRun = r.Epochs <= ShortRunEpochs;
            r.Augment = shortRun ? "none" : r.ImageSize >= 128 ? "crop-flip" : r.ImageSize > 0 ? "flip" : "auto";
            if (r.Augment != "auto")
                parts.Add($"augmentation {r.Augment} ({(shortRun ? $"a run of {r.Epochs} epoch{(r.Epochs == 1 ? "" : "s")}" : $"{r.Epochs} epochs at {r.ImageSize} px")})");
        }
        if (s.WarmupSteps == null)
        {
            long steps = Steps(r, trainImages);
            r.WarmupSteps = Warmup(steps);
            bool floor = r.WarmupSteps > Math.Round(WarmupFraction * steps, MidpointRounding.AwayFromZero);
            parts.Add(string.Create(CultureInfo.InvariantCulture,
                $"warm-up {r.WarmupSteps:N0} steps ({WarmupFraction * 100:0}% of {steps:N0}{(floor ? $", below the minimum of {MinWarmupSteps}" : "")})"));
        }
        return new Resolved(r, parts.Count > 0 ? "defaults from the data: " + string.Join(", ", parts) : null);
    }

    /// <summary>
    /// The automatic image size: the dataset's native side when it is at most <see cref="SmallImage"/>, rounded to the
    /// nearest multiple of the model's patch (halves up) and leaving at least <see cref="MinPatchesPerSide"/> patches a
    /// side; otherwise the model's default, which pretrained weights also keep. Null when the model plugin cannot say
    /// (an imported ONNX file, an architecture read from the weights): the model decides.
    /// </summary>
    public static (int Size, string Why)? ImageSize(int? native, ModelInputSize? model, bool pretrained)
    {
        if (model == null) return null;
        if (pretrained) return (model.DefaultSize, "the model's default, kept for pretrained weights");
        if (native is not int n) return (model.DefaultSize, "the model's default; the dataset's images have no single size");
        if (n > SmallImage) return (model.DefaultSize, $"the model's default; the dataset's {n} px images are larger than {SmallImage} px");
        int m = Math.Max(1, model.Multiple);
        int size = (int)Math.Round(n / (double)m, MidpointRounding.AwayFromZero) * m;
        if (size / m < MinPatchesPerSide)
            return (model.DefaultSize, $"the model's default; the dataset's {n} px would give fewer than {MinPatchesPerSide} patches of {m} px a side");
        return (size, size == n ? "the dataset's native size" : $"the dataset's {n} px rounded to a multiple of the patch size {m}");
    }

    /// <summary>Optimizer steps of the whole run: full batches per epoch (the last partial one is dropped), over the accumulation, times the epochs.</summary>
    public static long Steps(TrainSettings s, int trainImages) => (long)(trainImages / s.BatchSize / s.GradientAccumulation) * s.Epochs;

    /// <summary><see cref="WarmupFraction"/> of the steps (rounded), at least <see cref="MinWarmupSteps"/>, at most all of them.</summary>
    public static int Warmup(long steps) => (int)Math.Min(steps, Math.Max(MinWarmupSteps, (long)Math.Round(WarmupFraction * steps, MidpointRounding.AwayFromZero)));
}
