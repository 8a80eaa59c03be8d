namespace OrtFinetune.Plugins.Models.Weights;

/// <summary>
/// Resamples a ViT position table (1, 1 + g*g, D) to another square patch grid, keeping the class token's
/// row, with torch.nn.functional.interpolate(mode="bicubic", align_corners=False) semantics on the grid (as
/// timm's resample_abs_pos_embed without antialiasing, and HF's interpolate_pos_encoding): source coordinate
/// (dst + 0.5) * in / out - 0.5, cubic convolution with A = -0.75, border samples clamped to the grid.
/// </summary>
public static class PositionEmbedding
{
    const double A = -0.75;

    /// <summary>Side of the square patch grid of a table with <paramref name="tokens"/> rows (class token included), or null when it is not square.</summary>
    public static int? GridOf(long tokens)
    {
        long patches = tokens - 1;
        if (patches < 1) return null;
        int g = (int)Math.Round(Math.Sqrt(patches));
        return (long)g * g == patches ? g : null;
    }

    public static float[] Resample(float[] table, int dim, int fromGrid, int toGrid)
    {
        if (table.Length != (1 + fromGrid * fromGrid) * dim) throw new ArgumentException("table size does not match the grid");
        var result = new float[(1 + toGrid * toGrid) * dim];
        Array.Copy(table, result, dim);  // class token
        var (yIdx, yW) = Weights(fromGrid, toGrid);
        // Separable: rows first (along x), then columns (along y), in double.
        var rows = new double[fromGrid * toGrid * dim];   // (fromGrid y, toGrid x, D)
        for (int y = 0; y < fromGrid; y++)
            for (int x = 0; x < toGrid; x++)
                for (int k = 0; k < 4; k++)
                {
                    int src = 1 + y * fromGrid + yIdx[x, k];
                    double w = yW[x, k];
                    for (int d = 0; d < dim; d++) rows[(y * toGrid + x) * dim + d] += w * table[src * dim + d];
                }
        for (int y = 0; y < toGrid; y++)
            for (int x = 0; x < toGrid; x++)
            {
                int dst = 1 + y * toGrid + x;
                for (int d = 0; d < dim; d++)
                {
                    double s = 0;
                    for (int k = 0; k < 4; k++) s += yW[y, k] * rows[(yIdx[y, k] * toGrid + x) * dim + d];
                    result[dst * dim + d] = (float)s;
                }
            }
        return result;
    }

    /// <summary>For each output index: the four source indices (clamped) and their cubic weights.</summary>
    static (int[,] Index, double[,] Weight) Weights(int inSize, int outSize)
    {
        var idx = new int[outSize, 4];
        var w = new double[outSize, 4];
        double scale = (double)inSize / outSize;
        for (int o = 0; o < outSize; o++)
        {
            double src = (o + 0.5) * scale - 0.5;   // align_corners=False; not clamped for cubic, as torch
            int i0 = (int)Math.Floor(src);
            double t = src - i0;
            double[] c = [Cubic2(t + 1), Cubic1(t), Cubic1(1 - t), Cubic2(2 - t)];
            for (int k = 0; k < 4; k++)
            {
                idx[o, k] = Math.Clamp(i0 - 1 + k, 0, inSize - 1);
                w[o, k] = c[k];
            }
        }
        return (idx, w);
    }

    // Keys' cubic convolution kernel, |x| <= 1 and 1 < |x| < 2.
    static double Cubic1(double x) => ((A + 2) * x - (A + 3)) * x * x + 1;
    static double Cubic2(double x) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}
