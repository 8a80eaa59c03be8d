using System.Globalization;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>
/// All images of one split held in memory as a single byte array (fixed size per image).
/// Layout per image is either HWC (interleaved) or CHW (planar, e.g. CIFAR-10); Get returns HWC.
/// </summary>
public sealed class InMemoryImageDataset : IImageDataset
{
    private readonly byte[] _data;
    private readonly long _offset;
    private readonly int _stride;
    private readonly byte[] _labels;
    private readonly int _labelOffset;
    private readonly int _labelStride;
    private readonly long _imageOffsetInRecord;
    private readonly bool _planar;
    private readonly string _sourcePrefix;
    private readonly Func<int, string>? _sourceOf;

    public InMemoryImageDataset(string name, IReadOnlyList<string> classNames, int width, int height, int channels,
        byte[] data, long offset, int stride, long imageOffsetInRecord, bool planar,
        byte[] labels, int labelOffset, int labelStride, int count, string sourcePrefix, Func<int, string>? sourceOf = null)
    {
        _sourceOf = sourceOf;
        Name = name; ClassNames = classNames; Width = width; Height = height; Channels = channels;
        _data = data; _offset = offset; _stride = stride; _imageOffsetInRecord = imageOffsetInRecord; _planar = planar;
        _labels = labels; _labelOffset = labelOffset; _labelStride = labelStride; Count = count; _sourcePrefix = sourcePrefix;
    }

    public string Name { get; }
    public int Count { get; }
    public IReadOnlyList<string> ClassNames { get; }
    public int Width { get; }
    public int Height { get; }
    public int Channels { get; }

    public int LabelAt(int index) => _labels[_labelOffset + (long)index * _labelStride];

    public ImageSample Get(int index)
    {
        if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index), index, $"dataset '{Name}' has {Count} samples");
        int n = Width * Height * Channels;
        var pixels = new byte[n];
        var src = _data.AsSpan((int)(_offset + (long)index * _stride + _imageOffsetInRecord), n);
        if (!_planar || Channels == 1) src.CopyTo(pixels);
        else
        {
            int plane = Width * Height;
            for (int c = 0; c < Channels; c++)
            {
                var p = src.Slice(c * plane, plane);
                for (int i = 0; i < plane; i++) pixels[i * Channels + c] = p[i];
            }
        }
        return new ImageSample
        {
            Width = Width, Height = Height, Channels = Channels, Pixels = pixels,
            Label = LabelAt(index), Source = _sourceOf?.Invoke(index) ?? $"{_sourcePrefix} record {index}",
        };
    }
}

/// <summary>A view of another dataset through an index list.</summary>
public sealed class SubsetDataset : IImageDataset
{
    private readonly IImageDataset _inner;
    private readonly int[] _indices;

    public SubsetDataset(string name, IImageDataset inner, int[] indices)
    {
        Name = name; _inner = inner; _indices = indices;
    }

    public string Name { get; }
    public int Count => _indices.Length;
    public IReadOnlyList<string> ClassNames => _inner.ClassNames;
    public IImageDataset Inner => _inner;
    public IReadOnlyList<int> Indices => _indices;
    public ImageSample Get(int index)
    {
        if ((uint)index >= (uint)_indices.Length) throw new ArgumentOutOfRangeException(nameof(index), index, $"dataset '{Name}' has {Count} samples");
        return _inner.Get(_indices[index]);
    }
}

public static class Splits
{
    /// <summary>Carves a held-out part (fraction of n, rounded) out of a dataset; both parts keep their original order.</summary>
    public static (int[] Kept, int[] HeldOut) Carve(int n, double fraction, ulong seed)
    {
        if (double.IsNaN(fraction) || fraction < 0 || fraction >= 1)
            throw new DatasetException($"a held-out fraction must be in [0, 1), got {fraction.ToString(CultureInfo.InvariantCulture)}");
        int held = (int)Math.Round(n * fraction);
        if (fraction > 0 && held == 0 && n > 1) held = 1;
        var perm = SplitMix64.Permutation(n, seed);
        var heldOut = perm[..held]; var rest = perm[held..];
        Array.Sort(heldOut); Array.Sort(rest);
        return (rest, heldOut);
    }

    /// <summary>Caps a list of indices at the request's limit (0 = all); the first ones of a seeded shuffle are kept so the capped split stays class-balanced.</summary>
    public static int[] ApplyLimit(int[] indices, int limit, ulong seed)
    {
        if (limit <= 0 || indices.Length <= limit) return indices;
        var perm = SplitMix64.Permutation(indices.Length, seed);
        var kept = new int[limit];
        for (int i = 0; i < limit; i++) kept[i] = indices[perm[i]];
        Array.Sort(kept);
        return kept;
    }

    public static int[] Range(int n) { var r = new int[n]; for (int i = 0; i < n; i++) r[i] = i; return r; }

    /// <summary>Builds the three splits from full train (and optional validation) sets and a test set, applying ValidationFraction and Limit.</summary>
    /// <param name="nativeImageSize">The side of every image when all are square and of one size (<see cref="DatasetSplits.NativeImageSize"/>).</param>
    public static DatasetSplits Build(string name, DatasetRequest request, IImageDataset train, IImageDataset? validation, IImageDataset test, int? nativeImageSize = null)
    {
        int[] trainIdx, valIdx;
        IImageDataset valSource;
        if (validation is null)
        {
            (trainIdx, valIdx) = Carve(train.Count, request.ValidationFraction, SplitMix64.Hash(request.Seed, 0x56414C));
            valSource = train;
        }
        else
        {
            trainIdx = Range(train.Count); valIdx = Range(validation.Count); valSource = validation;
        }
        var testIdx = Range(test.Count);
        trainIdx = ApplyLimit(trainIdx, request.Limit, SplitMix64.Hash(request.Seed, 1));
        valIdx = ApplyLimit(valIdx, request.Limit, SplitMix64.Hash(request.Seed, 2));
        testIdx = ApplyLimit(testIdx, request.Limit, SplitMix64.Hash(request.Seed, 3));
        return new DatasetSplits(
            Wrap($"{name}/train", train, trainIdx),
            Wrap($"{name}/validation", valSource, valIdx),
            Wrap($"{name}/test", test, testIdx)) { NativeImageSize = nativeImageSize };
    }

    /// <summary>The common square side of in-memory splits (IDX, CIFAR), or null when they differ or are not square.</summary>
    public static int? CommonSquareSize(params InMemoryImageDataset[] sets) =>
        sets.Length > 0 && sets.All(d => d.Width == d.Height && d.Width == sets[0].Width) ? sets[0].Width : null;

    private static IImageDataset Wrap(string name, IImageDataset inner, int[] idx) => new SubsetDataset(name, inner, idx);
}

/// <summary>Reads provider settings with validation; bad values are DatasetExceptions naming the setting.</summary>
public static class SettingsReader
{
    public static int GetInt(DatasetRequest r, string key, int fallback, int min, int max)
    {
        if (!r.Settings.TryGetValue(key, out var s) || string.IsNullOrWhiteSpace(s)) return fallback;
        if (!int.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
            throw new DatasetException($"setting '{key}' must be an integer in [{min}, {max}], got '{s}'");
        return v;
    }

    public static long GetLong(DatasetRequest r, string key, long fallback, long min, long max)
    {
        if (!r.Settings.TryGetValue(key, out var s) || string.IsNullOrWhiteSpace(s)) return fallback;
        if (!long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) || v < min || v > max)
            throw new DatasetException($"setting '{key}' must be an integer in [{min}, {max}], got '{s}'");
        return v;
    }

    public static double GetDouble(DatasetRequest r, string key, double fallback, double min, double max)
    {
        if (!r.Settings.TryGetValue(key, out var s) || string.IsNullOrWhiteSpace(s)) return fallback;
        if (!double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v >= min && v <= max))
            throw new DatasetException($"setting '{key}' must be a number in [{min.ToString(CultureInfo.InvariantCulture)}, {max.ToString(CultureInfo.InvariantCulture)}], got '{s}'");
        return v;
    }

    public static string? GetString(DatasetRequest r, string key) =>
        r.Settings.TryGetValue(key, out var s) && !string.IsNullOrWhiteSpace(s) ? s.Trim() : null;
}
