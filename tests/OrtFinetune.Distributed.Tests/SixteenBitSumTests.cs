namespace OrtFinetune.Distributed.Tests;

/// <summary>The fp16/bf16 sums behind the 16-bit MPI ops, called directly.</summary>
public sealed class SixteenBitSumTests
{
    static ushort Bits(Half h) => BitConverter.HalfToUInt16Bits(h);

    [Fact]
    public void Bf16RoundsToNearestEven()
    {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even one, 1.
        Assert.Equal(0x3F80, SixteenBitSum.ToBFloat16(1f + MathF.Pow(2, -8)));
        // (1 + 2^-7) + 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        Assert.Equal(0x3F82, SixteenBitSum.ToBFloat16(1f + MathF.Pow(2, -7) + MathF.Pow(2, -8)));
        // Just above halfway rounds up, just below rounds down.
        Assert.Equal(0x3F81, SixteenBitSum.ToBFloat16(BitConverter.Int32BitsToSingle(0x3F80_8001)));
        Assert.Equal(0x3F80, SixteenBitSum.ToBFloat16(BitConverter.Int32BitsToSingle(0x3F80_7FFF)));
        Assert.Equal(0xBF80, SixteenBitSum.ToBFloat16(-1f));
        Assert.Equal(0x0000, SixteenBitSum.ToBFloat16(0f));
        Assert.Equal(0x8000, SixteenBitSum.ToBFloat16(-0f));
    }

    [Fact]
    public void Bf16KeepsNonFiniteValues()
    {
        Assert.Equal(0x7F80, SixteenBitSum.ToBFloat16(float.PositiveInfinity));
        Assert.Equal(0xFF80, SixteenBitSum.ToBFloat16(float.NegativeInfinity));
        Assert.True(float.IsNaN(SixteenBitSum.FromBFloat16(SixteenBitSum.ToBFloat16(float.NaN))));
        // A NaN whose payload is only in the low half would round to infinity without the NaN check.
        var lowNaN = BitConverter.Int32BitsToSingle(0x7F80_0001);
        Assert.True(float.IsNaN(lowNaN));
        Assert.True(float.IsNaN(SixteenBitSum.FromBFloat16(SixteenBitSum.ToBFloat16(lowNaN))));
        Assert.True(float.IsNaN(SixteenBitSum.FromBFloat16(SixteenBitSum.ToBFloat16(-lowNaN))));
        // Past bf16's largest finite value (0x7F7F) rounds to infinity.
        Assert.Equal(0x7F80, SixteenBitSum.ToBFloat16(float.MaxValue));
    }

    [Fact]
    public void Bf16SumsAreCorrectlyRounded()
    {
        // Against double-precision sums rounded once, for many pairs of bf16 values.
        var rng = new Random(7);
        var a = new ushort[20_000];
        var b = new ushort[a.Length];
        for (int i = 0; i < a.Length; i++)
        {
            // Exponents near each other (most interesting) and random bit patterns, finite only.
            a[i] = (ushort)(0x3F00 + rng.Next(0x200) | (rng.Next(2) << 15));
            b[i] = i % 2 == 0 ? (ushort)(0x3F00 + rng.Next(0x200) | (rng.Next(2) << 15)) : (ushort)(rng.Next(0x7F00) | (rng.Next(2) << 15));
        }
        var sum = (ushort[])b.Clone();
        SixteenBitSum.AddBFloat16(a, sum);
        for (int i = 0; i < a.Length; i++)
        {
            double exact = (double)SixteenBitSum.FromBFloat16(a[i]) + SixteenBitSum.FromBFloat16(b[i]);
            Assert.Equal(RoundToBf16(exact), SixteenBitSum.FromBFloat16(sum[i]));
        }
    }

    /// <summary>Reference: the nearest bf16 to a double (ties to even), by comparing neighbours.</summary>
    static double RoundToBf16(double x)
    {
        float f = (float)x;   // may round, so look at the bf16 values around it
        ushort lo = (ushort)(BitConverter.SingleToUInt32Bits(f) >> 16);
        double best = double.NaN, bestDist = double.PositiveInfinity;
        foreach (var c in (ushort[])[(ushort)(lo - 1), lo, (ushort)(lo + 1)])
        {
            double v = SixteenBitSum.FromBFloat16(c), d = Math.Abs(v - x);
            if (!double.IsFinite(v)) continue;
            if (d < bestDist || (d == bestDist && (c & 1) == 0)) { best = v; bestDist = d; }
        }
        return best;
    }

    [Fact]
    public void Fp16ConversionsMatchSystemHalf()
    {
        // Every fp16 value to fp32 and back.
        for (int h = 0; h <= 0xFFFF; h++)
        {
            var expected = (float)BitConverter.UInt16BitsToHalf((ushort)h);
            var actual = SixteenBitSum.FromFloat16((ushort)h);
            Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual) || (float.IsNaN(expected) && float.IsNaN(actual)), $"0x{h:X4}");
            if (!float.IsNaN(actual)) Assert.Equal(h, SixteenBitSum.ToFloat16(actual));
        }
        // fp32 values at, just below and just above every halfway point between fp16 neighbours, and random ones.
        var rng = new Random(11);
        IEnumerable<float> Candidates()
        {
            for (int h = 0; h < 0x7C00; h++)
            {
                float lo = (float)BitConverter.UInt16BitsToHalf((ushort)h), hi = h == 0x7BFF ? 65536f : (float)BitConverter.UInt16BitsToHalf((ushort)(h + 1));
                float mid = (lo + hi) / 2;   // exact in fp32
                yield return mid; yield return MathF.BitDecrement(mid); yield return MathF.BitIncrement(mid);
            }
            for (int i = 0; i < 200_000; i++) yield return BitConverter.Int32BitsToSingle(rng.Next() | (rng.Next(2) << 31));
        }
        foreach (var f in Candidates().SelectMany(f => (float[])[f, -f]))
        {
            ushort expected = BitConverter.HalfToUInt16Bits((Half)f), actual = SixteenBitSum.ToFloat16(f);
            Assert.True(expected == actual || (float.IsNaN(f) && Half.IsNaN(BitConverter.UInt16BitsToHalf(actual))), $"{f:R}: 0x{actual:X4}, want 0x{expected:X4}");
        }
    }

    [Fact]
    public void Fp16SumsPropagateNonFiniteAndOverflow()
    {
        Half[] a = [(Half)1, Half.NaN, Half.PositiveInfinity, Half.PositiveInfinity, (Half)60000, (Half)0.5];
        Half[] b = [(Half)2, (Half)1, (Half)(-3), Half.NegativeInfinity, (Half)60000, (Half)0.25];
        var ab = a.Select(Bits).ToArray();
        var sum = b.Select(Bits).ToArray();
        SixteenBitSum.AddFloat16(ab, sum);
        var h = sum.Select(BitConverter.UInt16BitsToHalf).ToArray();
        Assert.Equal((Half)3, h[0]);
        Assert.True(Half.IsNaN(h[1]));
        Assert.True(Half.IsPositiveInfinity(h[2]));
        Assert.True(Half.IsNaN(h[3]));
        Assert.True(Half.IsPositiveInfinity(h[4]));
        Assert.Equal((Half)0.75, h[5]);
    }

    [Fact]
    public void Bf16SumsPropagateNonFinite()
    {
        ushort[] a = [0x3F80, 0x7FC0, 0x7F80, 0x7F80, 0x7F7F];
        ushort[] sum = [0x4000, 0x3F80, 0xC040, 0xFF80, 0x7F7F];
        SixteenBitSum.AddBFloat16(a, sum);
        Assert.Equal(3f, SixteenBitSum.FromBFloat16(sum[0]));
        Assert.True(float.IsNaN(SixteenBitSum.FromBFloat16(sum[1])));
        Assert.True(float.IsPositiveInfinity(SixteenBitSum.FromBFloat16(sum[2])));
        Assert.True(float.IsNaN(SixteenBitSum.FromBFloat16(sum[3])));
        Assert.True(float.IsPositiveInfinity(SixteenBitSum.FromBFloat16(sum[4])));   // largest + largest overflows
    }
}
