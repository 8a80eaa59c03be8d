namespace OrtFinetune.Abstractions;

/// <summary>
/// Small deterministic 64-bit generator (SplitMix64), seeded from a hash of integers (seed, epoch, index, ...),
/// so data order, splits and augmentations depend on neither thread scheduling nor the .NET version (unlike
/// System.Random). Shared by the data loader and the dataset plugins.
/// </summary>
public struct SplitMix64
{
    private ulong _state;

    /// <summary>A generator starting from <paramref name="seed"/> (e.g. from <see cref="Hash"/>).</summary>
    public SplitMix64(ulong seed) { _state = seed; }

    /// <summary>SplitMix64's finalizer: a bijective mix of the 64 bits of <paramref name="z"/>.</summary>
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>A seed from the parts, in order (trailing zeros count: Hash(a, b) differs from Hash(a, b, 0)).</summary>
    public static ulong Hash(params ReadOnlySpan<long> parts)
    {
        ulong h = 0x9E3779B97F4A7C15UL;
        foreach (var p in parts) h = Mix(h + 0x9E3779B97F4A7C15UL + (ulong)p);
        return h;
    }

    /// <summary>The next 64 uniformly distributed bits.</summary>
    public ulong NextUInt64() { _state += 0x9E3779B97F4A7C15UL; return Mix(_state); }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [lo, hi) (hi &gt; lo), like torch.randint(lo, hi).</summary>
    public int Next(int lo, int hi) => lo + (int)(NextUInt64() % (ulong)(hi - lo));

    /// <summary>Uniform in [lo, hi).</summary>
    public double Uniform(double lo, double hi) => lo + (hi - lo) * NextDouble();

    /// <summary>A seeded permutation of 0..n-1 (Fisher-Yates).</summary>
    public static int[] Permutation(int n, ulong seed)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        var rng = new SplitMix64(seed);
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)(rng.NextUInt64() % (ulong)(i + 1));
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }
}
