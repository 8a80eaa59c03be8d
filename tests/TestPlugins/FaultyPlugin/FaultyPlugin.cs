using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Tests.FaultyPlugin;

/// <summary>
/// Test plugin. With ORTFT_FAULTY_CONFIGURE=1 its Configure throws (a plugin that fails at load).
/// Otherwise it provides:
///   "faulty-open": Open throws InvalidOperationException (a plugin that fails at use, not with DatasetException);
///   "faulty-get":  opens, but reading any training image throws InvalidOperationException;
///   "slow-eval":   a two-class dataset (bright/dark squares, 16x16 RGB) whose validation reads sleep
///                  ORTFT_SLOW_EVAL_MS (default 30) ms each, so a signal can be sent during evaluation.
/// </summary>
public sealed class FaultyPlugin : IPlugin
{
    public string Name => "faulty";
    public void Configure(IServiceCollection services)
    {
        if (Environment.GetEnvironmentVariable("ORTFT_FAULTY_CONFIGURE") == "1")
            throw new InvalidOperationException("faulty plugin: Configure exploded on purpose");
        services.AddSingleton<IDatasetProvider, FaultyOpenProvider>();
        services.AddSingleton<IDatasetProvider, FaultyGetProvider>();
        services.AddSingleton<IDatasetProvider, SlowEvalProvider>();
    }
}

public sealed class FaultyOpenProvider : IDatasetProvider
{
    public string Name => "faulty-open";
    public string Description => "throws InvalidOperationException from Open";
    public DatasetSplits Open(DatasetRequest request) => throw new InvalidOperationException("faulty plugin: Open exploded on purpose");
}

public sealed class FaultyGetProvider : IDatasetProvider
{
    public string Name => "faulty-get";
    public string Description => "opens, then throws InvalidOperationException from Get";
    public DatasetSplits Open(DatasetRequest request)
    {
        var good = new Squares("faulty-get/val", 64, 0, request.Seed);
        return new DatasetSplits(new Squares("faulty-get/train", 64, 0, request.Seed, throwOnGet: true), good, good);
    }
}

public sealed class SlowEvalProvider : IDatasetProvider
{
    public string Name => "slow-eval";
    public string Description => "bright vs dark squares; validation reads are slow";
    public DatasetSplits Open(DatasetRequest request)
    {
        int ms = int.TryParse(Environment.GetEnvironmentVariable("ORTFT_SLOW_EVAL_MS"), out var v) ? v : 30;
        int n = request.Limit > 0 ? request.Limit : 128;
        return new DatasetSplits(new Squares("slow-eval/train", n, 0, request.Seed), new Squares("slow-eval/val", n, ms, request.Seed + 1), new Squares("slow-eval/test", 32, 0, request.Seed + 2));
    }
}

sealed class Squares(string name, int count, int sleepMs, int seed, bool throwOnGet = false) : IImageDataset
{
    public string Name => name;
    public int Count => count;
    public IReadOnlyList<string> ClassNames { get; } = ["bright", "dark"];

    public ImageSample Get(int index)
    {
        if (throwOnGet) throw new InvalidOperationException($"faulty plugin: Get({index}) exploded on purpose");
        if (sleepMs > 0) Thread.Sleep(sleepMs);
        var rng = new Random(seed * 100003 + index);
        bool bright = index % 2 == 0;
        var px = new byte[16 * 16 * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)(bright ? rng.Next(160, 256) : rng.Next(0, 96));
        return new ImageSample { Width = 16, Height = 16, Channels = 3, Pixels = px, Label = bright ? 0 : 1, Source = $"{name}[{index}]" };
    }
}
