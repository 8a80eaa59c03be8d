namespace OrtFinetune.Training.Data;

/// <summary>
/// Small deterministic generator (SplitMix64) seeded per sample from (seed, epoch, index), so augmentations do not
/// depend on thread scheduling or batch order. Stable across .NET versions, unlike System.Random.
/// </summary>
public struct SampleRandom
{
    private ulong _state;

    public SampleRandom(ulong seed) { _state = seed; }

    public static SampleRandom For(long seed, long epoch, long index) => new(Hash(seed, epoch, index));

    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public static ulong Hash(long a, long b, long c = 0, long d = 0)
    {
        ulong h = 0x9E3779B97F4A7C15UL;
        h = Mix(h + 0x9E3779B97F4A7C15UL + (ulong)a);
        h = Mix(h + 0x9E3779B97F4A7C15UL + (ulong)b);
        h = Mix(h + 0x9E3779B97F4A7C15UL + (ulong)c);
        h = Mix(h + 0x9E3779B97F4A7C15UL + (ulong)d);
        return h;
    }

    public ulong NextUInt64() { _state += 0x9E3779B97F4A7C15UL; return Mix(_state); }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    public double Uniform(double lo, double hi) => lo + (hi - lo) * NextDouble();

    /// <summary>Uniform integer in [lo, hi] (inclusive, like torch.randint(lo, hi + 1)).</summary>
    public int NextInclusive(int lo, int hi) => lo + (int)(NextUInt64() % (ulong)(hi - lo + 1));

    /// <summary>A seeded permutation of 0..n-1 (Fisher-Yates).</summary>
    public static int[] Permutation(int n, ulong seed)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        var rng = new SampleRandom(seed);
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)(rng.NextUInt64() % (ulong)(i + 1));
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }
}
