using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace MyPlugin;

/// <summary>The plugin's entry point: the host creates it and lets it register its providers as singletons.</summary>
public sealed class DatasetPlugin : IPlugin
{
    public string Name => "MyPlugin";
    public void Configure(IServiceCollection services) => services.AddSingleton<IDatasetProvider, StripesProvider>();
}

/// <summary>
/// <c>--dataset myplugin</c>: a procedural dataset (no files): horizontal, vertical or diagonal stripes, or a
/// checkerboard, with random period, phase, tilt, colours and noise (classes that a horizontal flip, the default
/// augmentation, leaves unchanged). Sample i of a split is a pure function of (seed, split, i), so runs are
/// reproducible and resume exactly.
/// To read real data instead: open files under <see cref="DatasetRequest.DataDir"/> (<c>--data-dir</c>) and throw
/// <see cref="DatasetException"/> naming the file when one is missing or malformed.
/// </summary>
public sealed class StripesProvider : IDatasetProvider
{
    public const int ImageSize = 32, TrainSize = 4000, TestSize = 800;
    public static readonly string[] Classes = ["horizontal", "vertical", "diagonal", "checks"];

    public string Name => "myplugin";
    public string Description => $"procedural stripes and checks, {Classes.Length} classes ({TrainSize} train, {TestSize} test images, {ImageSize} px); no files needed";

    public DatasetSplits Open(DatasetRequest request)
    {
        double f = request.ValidationFraction;
        if (double.IsNaN(f) || f < 0 || f >= 1) throw new DatasetException($"{Name}: the validation fraction must be in [0, 1), got {f}");
        // Validation: the first samples of the training stream; training: the rest. --limit caps every split.
        int held = (int)Math.Round(TrainSize * f);
        if (f > 0 && held == 0) held = 1;
        int Cap(int n) => request.Limit > 0 ? Math.Min(n, request.Limit) : n;
        return new DatasetSplits(
            new StripesImages($"{Name}/train", request.Seed, split: 0, first: held, Cap(TrainSize - held)),
            new StripesImages($"{Name}/val", request.Seed, split: 0, first: 0, Cap(held)),
            new StripesImages($"{Name}/test", request.Seed, split: 1, first: 0, Cap(TestSize)));
    }
}

/// <summary>Samples <c>first</c> .. <c>first + count - 1</c> of a generated stream; thread-safe (no shared state).</summary>
sealed class StripesImages(string name, int seed, int split, int first, int count) : IImageDataset
{
    public string Name => name;
    public int Count => count;
    public IReadOnlyList<string> ClassNames => StripesProvider.Classes;

    public ImageSample Get(int index)
    {
        if ((uint)index >= (uint)count) throw new ArgumentOutOfRangeException(nameof(index), index, $"dataset '{name}' has {count} samples");
        int i = first + index;
        int label = i % StripesProvider.Classes.Length;              // balanced classes under any --limit
        var rng = new SplitMix64(SplitMix64.Hash(seed, split, i));
        const int S = StripesProvider.ImageSize;
        double angle = label switch { 1 => Math.PI / 2, 2 => (rng.NextDouble() < 0.5 ? 1 : 3) * Math.PI / 4, _ => 0 } + rng.Uniform(-0.12, 0.12);
        double period = rng.Uniform(4, 9), phase = rng.Uniform(0, 2 * Math.PI), phase2 = rng.Uniform(0, 2 * Math.PI);
        double nx = -Math.Sin(angle), ny = Math.Cos(angle);            // stripes run along the angle; checks: both ways
        var bg = new double[3]; var fg = new double[3];
        for (int c = 0; c < 3; c++) { bg[c] = rng.Uniform(0, 256); fg[c] = (bg[c] + rng.Uniform(90, 166)) % 256; }
        var px = new byte[S * S * 3];
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++)
            {
                bool on = Math.Sin(2 * Math.PI * (x * nx + y * ny) / period + phase) > 0;
                if (label == 3) on ^= Math.Sin(2 * Math.PI * (x * ny - y * nx) / period + phase2) > 0;
                for (int c = 0; c < 3; c++)
                    px[(y * S + x) * 3 + c] = (byte)Math.Clamp((int)Math.Round((on ? fg[c] : bg[c]) + rng.Uniform(-20, 20)), 0, 255);
            }
        return new ImageSample { Width = S, Height = S, Channels = 3, Pixels = px, Label = label, Source = $"{name} #{index}" };
    }
}
