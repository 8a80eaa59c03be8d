namespace OrtFinetune.Plugins.Models;

/// <summary>
/// Seeded initializers with PyTorch's semantics (not its random stream): normal, truncated normal with
/// absolute bounds, uniform, Xavier uniform, nn.Linear's default. Deterministic for a given seed and
/// call order. They fill spans so large weights are written straight into tensor buffers.
/// </summary>
public sealed class WeightInit
{
    readonly Random _rng;
    double? _spare;

    public WeightInit(int seed) { _rng = new Random(seed); }

    public double NextNormal()
    {
        if (_spare is double s) { _spare = null; return s; }
        double u1;
        do u1 = _rng.NextDouble(); while (u1 <= double.Epsilon);
        double u2 = _rng.NextDouble();
        double r = Math.Sqrt(-2.0 * Math.Log(u1));
        _spare = r * Math.Sin(2 * Math.PI * u2);
        return r * Math.Cos(2 * Math.PI * u2);
    }

    public static void Zeros(Span<float> a) => a.Clear();
    public static void Ones(Span<float> a) => a.Fill(1f);

    public void Normal(Span<float> a, double std, double mean = 0)
    {
        for (int i = 0; i < a.Length; i++) a[i] = (float)(mean + std * NextNormal());
    }

    /// <summary>torch.nn.init.trunc_normal_: N(mean, std) resampled until inside the absolute bounds [lo, hi].</summary>
    public void TruncNormal(Span<float> a, double std, double mean = 0, double lo = -2, double hi = 2)
    {
        for (int i = 0; i < a.Length; i++)
        {
            double v;
            int tries = 0;
            do v = mean + std * NextNormal(); while ((v < lo || v > hi) && ++tries < 1000);
            a[i] = (float)Math.Clamp(v, lo, hi);
        }
    }

    public void Uniform(Span<float> a, double lo, double hi)
    {
        for (int i = 0; i < a.Length; i++) a[i] = (float)(lo + (hi - lo) * _rng.NextDouble());
    }

    /// <summary>torch.nn.init.xavier_uniform_ for a (fanOut, fanIn) weight.</summary>
    public void XavierUniform(Span<float> a, long fanOut, long fanIn)
    {
        double bound = Math.Sqrt(6.0 / (fanIn + fanOut));
        Uniform(a, -bound, bound);
    }

    /// <summary>nn.Linear's default for weight and bias: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fanIn), 1/sqrt(fanIn)).</summary>
    public void LinearDefault(Span<float> a, long fanIn)
    {
        double bound = fanIn > 0 ? 1.0 / Math.Sqrt(fanIn) : 0;
        Uniform(a, -bound, bound);
    }
}
