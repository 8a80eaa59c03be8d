using OrtFinetune.Abstractions;

namespace OrtFinetune.Training.Data;

/// <summary>
/// What a <see cref="TransformPipeline"/> does, in torchvision terms. Training: RandomResizedCrop(Size, Scale, Ratio)
/// when <see cref="RandomResizedCrop"/> is set, else Resize(ResizeShorter) + (Random)Crop(Size, padding
/// RandomCropPadding); then RandomHorizontalFlip(HorizontalFlip). Evaluation: Resize(ResizeShorter or Size) +
/// CenterCrop(Size). Always: channel conversion to <see cref="Channels"/>, ToTensor, Normalize(Mean, Std).
/// </summary>
public sealed record TransformOptions
{
    /// <summary>Output height and width.</summary>
    public int Size { get; init; } = 224;
    /// <summary>Resize the shorter side to this before cropping (0: Size).</summary>
    public int ResizeShorter { get; init; }
    public bool RandomResizedCrop { get; init; }
    public (double Min, double Max) Scale { get; init; } = (0.08, 1.0);
    public (double Min, double Max) Ratio { get; init; } = (3.0 / 4.0, 4.0 / 3.0);
    /// <summary>Random crop with this much zero padding on each side (0: center crop; only without RandomResizedCrop).</summary>
    public int RandomCropPadding { get; init; }
    /// <summary>Probability of a horizontal flip.</summary>
    public double HorizontalFlip { get; init; }
    /// <summary>Output channels: 3 (grayscale replicated) or 1 (RGB converted to luma).</summary>
    public int Channels { get; init; } = 3;
    /// <summary>Per-channel mean and std after scaling to [0, 1] (one value applies to all channels).</summary>
    public float[] Mean { get; init; } = { 0.5f, 0.5f, 0.5f };
    public float[] Std { get; init; } = { 0.5f, 0.5f, 0.5f };

    public static readonly float[] ImageNetMean = { 0.485f, 0.456f, 0.406f };
    public static readonly float[] ImageNetStd = { 0.229f, 0.224f, 0.225f };

    /// <summary>Deterministic preprocessing: resize shorter side, center crop, normalize.</summary>
    public static TransformOptions Eval(int size, int resizeShorter = 0) => new() { Size = size, ResizeShorter = resizeShorter };

    /// <summary>ImageNet-style augmentation: RandomResizedCrop + horizontal flip.</summary>
    public static TransformOptions Train(int size, double minScale = 0.08, double flip = 0.5) =>
        new() { Size = size, RandomResizedCrop = true, Scale = (minScale, 1.0), HorizontalFlip = flip };

    /// <summary>This options' evaluation counterpart: same size, channels and normalization, no randomness.</summary>
    public TransformOptions ToEval() => this with { RandomResizedCrop = false, RandomCropPadding = 0, HorizontalFlip = 0 };
}

/// <summary>
/// ImageSample (HWC bytes) -> CHW float tensor. Random choices come from a generator seeded by (seed, epoch, index),
/// so a sample's augmentation is the same whichever thread computes it and whatever the batch order.
/// </summary>
public sealed class TransformPipeline
{
    private readonly float[] _mean, _std;

    public TransformPipeline(TransformOptions options)
    {
        Options = options ?? throw new ArgumentNullException(nameof(options));
        if (options.Size < 1 || options.Size > 8192) throw new ArgumentOutOfRangeException(nameof(options), $"Size must be 1..8192, got {options.Size}");
        if (options.ResizeShorter < 0) throw new ArgumentOutOfRangeException(nameof(options), "ResizeShorter must be >= 0");
        if (options.Channels is not (1 or 3)) throw new ArgumentOutOfRangeException(nameof(options), $"Channels must be 1 or 3, got {options.Channels}");
        if (!(options.Scale.Min > 0 && options.Scale.Min <= options.Scale.Max && options.Scale.Max <= 1))
            throw new ArgumentOutOfRangeException(nameof(options), $"Scale must satisfy 0 < min <= max <= 1, got {options.Scale}");
        if (!(options.Ratio.Min > 0 && options.Ratio.Min <= options.Ratio.Max))
            throw new ArgumentOutOfRangeException(nameof(options), $"Ratio must satisfy 0 < min <= max, got {options.Ratio}");
        if (options.RandomCropPadding < 0) throw new ArgumentOutOfRangeException(nameof(options), "RandomCropPadding must be >= 0");
        if (!(options.HorizontalFlip >= 0 && options.HorizontalFlip <= 1)) throw new ArgumentOutOfRangeException(nameof(options), "HorizontalFlip must be a probability");
        _mean = Expand(options.Mean, options.Channels, "Mean");
        _std = Expand(options.Std, options.Channels, "Std");
        foreach (var s in _std) if (!(s > 0) || float.IsInfinity(s)) throw new ArgumentOutOfRangeException(nameof(options), "Std values must be positive");
    }

    private static float[] Expand(float[] v, int c, string what)
    {
        if (v is null || v.Length == 0) throw new ArgumentException($"{what} is empty");
        if (v.Length == c) return (float[])v.Clone();
        if (v.Length == 1) return Enumerable.Repeat(v[0], c).ToArray();
        if (c == 1 && v.Length == 3) return new[] { v.Average() };
        throw new ArgumentException($"{what} has {v.Length} values for {c} channels");
    }

    public TransformOptions Options { get; }
    public int Channels => Options.Channels;
    public int Height => Options.Size;
    public int Width => Options.Size;
    /// <summary>Floats per transformed sample (C x H x W).</summary>
    public int SampleLength => Options.Channels * Options.Size * Options.Size;
    public bool IsRandom => Options.RandomResizedCrop || Options.RandomCropPadding > 0 || Options.HorizontalFlip > 0;

    public float[] Apply(ImageSample sample, long seed = 0, int epoch = 0, int index = 0)
    {
        var dest = new float[SampleLength];
        Apply(sample, seed, epoch, index, dest);
        return dest;
    }

    public void Apply(ImageSample sample, long seed, int epoch, int index, Span<float> dest)
    {
        if (dest.Length < SampleLength) throw new ArgumentException($"destination holds {dest.Length} floats, {SampleLength} needed");
        if (sample.Width < 1 || sample.Height < 1 || sample.Channels is not (1 or 3) || sample.Pixels is null ||
            sample.Pixels.Length != (long)sample.Width * sample.Height * sample.Channels)
            throw new ArgumentException($"sample {sample.Source}: malformed image ({sample.Width}x{sample.Height}x{sample.Channels}, {sample.Pixels?.Length ?? 0} bytes)");

        var rng = new SplitMix64(SplitMix64.Hash(seed, epoch, index, 0));
        var o = Options;
        int W = sample.Width, H = sample.Height, S = o.Size;
        Transforms.AxisMap xs, ys;
        if (o.RandomResizedCrop)
        {
            var box = Transforms.RandomResizedCrop(W, H, ref rng, o.Scale, o.Ratio);
            bool flip = o.HorizontalFlip > 0 && rng.NextDouble() < o.HorizontalFlip;
            xs = Transforms.AxisMap.CropThenResize(W, box.Left, box.Width, S, flip);
            ys = Transforms.AxisMap.CropThenResize(H, box.Top, box.Height, S, false);
        }
        else
        {
            int shorter = o.ResizeShorter > 0 ? o.ResizeShorter : S;
            var (rw, rh) = Transforms.ResizeShorterSide(W, H, shorter);
            CropBox box;
            if (o.RandomCropPadding > 0)
            {
                int p = o.RandomCropPadding;
                // torchvision RandomCrop(padding=p): pad, then a uniform offset in the padded image.
                int top = rng.Next(0, Math.Max(0, rh + 2 * p - S) + 1) - p;
                int left = rng.Next(0, Math.Max(0, rw + 2 * p - S) + 1) - p;
                box = new CropBox(left, top, S, S);
            }
            else box = Transforms.CenterCrop(rw, rh, S, S);
            bool flip = o.HorizontalFlip > 0 && rng.NextDouble() < o.HorizontalFlip;
            xs = Transforms.AxisMap.ResizeThenCrop(W, rw, box.Left, S, flip);
            ys = Transforms.AxisMap.ResizeThenCrop(H, rh, box.Top, S, false);
        }
        Transforms.Resample(sample, xs, ys, o.Channels, _mean, _std, dest);
    }
}
