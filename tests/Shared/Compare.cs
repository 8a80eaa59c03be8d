namespace OrtFinetune.Tests;

/// <summary>Comparisons shared by the test projects (linked into each as a source file).</summary>
public static class Compare
{
    /// <summary>Relative error of <paramref name="ours"/> against <paramref name="reference"/>: ‖ours − ref‖₂ / ‖ref‖₂ (the norm floored at 1e-30).</summary>
    public static double RelErr(ReadOnlySpan<double> ours, ReadOnlySpan<double> reference)
    {
        Assert.Equal(reference.Length, ours.Length);
        double num = 0, den = 0;
        for (int i = 0; i < reference.Length; i++) { num += (ours[i] - reference[i]) * (ours[i] - reference[i]); den += reference[i] * reference[i]; }
        return Math.Sqrt(num) / Math.Max(Math.Sqrt(den), 1e-30);
    }

    public static double RelErr(ReadOnlySpan<float> ours, ReadOnlySpan<double> reference)
    {
        var wide = new double[ours.Length];
        for (int i = 0; i < ours.Length; i++) wide[i] = ours[i];
        return RelErr(wide, reference);
    }
}
