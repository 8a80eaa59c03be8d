using OrtFinetune.Onnx;

namespace OrtFinetune.Host.Benchmarking;

/// <summary>
/// Analytic FLOP count of a graph: 2 x multiply-adds of every MatMul, Gemm, Conv and ConvTranspose,
/// from the shapes shape inference gives once the symbolic (batch) dimensions of the inputs are
/// substituted. Everything else (elementwise, normalization, softmax, the optimizer) is not counted,
/// as is usual for "achieved FLOP/s" figures.
/// </summary>
public static class FlopCounter
{
    /// <param name="LowPrecision">Counted nodes whose output is float16 or bfloat16 (run in 16-bit).</param>
    /// <param name="LowPrecisionFlops">The FLOPs of those nodes.</param>
    public sealed record Result(double Total, IReadOnlyDictionary<string, double> ByOpType, int Counted, IReadOnlyList<string> Skipped, int LowPrecision = 0, double LowPrecisionFlops = 0);

    /// <summary>Counts <paramref name="model"/> (a clone is inferred; the model is not changed) with every symbolic input dim set to <paramref name="batch"/>.</summary>
    public static Result Count(Model model, long batch)
    {
        var g = OrtFinetune.Training.Compiler.Scheduling.MemoryModel.AtBatch(model, batch).Graph;

        var by = new Dictionary<string, double>();
        var skipped = new List<string>();
        int counted = 0, low = 0;
        double lowFlops = 0;
        foreach (var n in g.Nodes)
        {
            if (n.OpType is not ("MatMul" or "Gemm" or "Conv" or "ConvTranspose") || n.Domain != "") continue;
            double? f = n.OpType switch
            {
                "MatMul" => MatMul(Dims(g, n.Input(0)), Dims(g, n.Input(1))),
                "Gemm" => Gemm(n, Dims(g, n.Input(0)), Dims(g, n.Input(1))),
                "Conv" => Conv(n, Dims(g, n.Input(1)), Dims(g, n.Output(0))),
                _ => ConvTranspose(n, Dims(g, n.Input(0)), Dims(g, n.Input(1))),
            };
            if (f == null) { skipped.Add($"{n.OpType} {n.Name}"); continue; }
            by[n.OpType] = by.GetValueOrDefault(n.OpType) + f.Value;
            counted++;
            if (g.TypeOf(n.Output(0))?.ElemType is DataType.Float16 or DataType.BFloat16) { low++; lowFlops += f.Value; }
        }
        return new Result(by.Values.Sum(), by, counted, skipped, low, lowFlops);
    }

    static long[]? Dims(Graph g, string name)
    {
        if (name.Length == 0) return null;
        var t = g.TypeOf(name);
        return t is { IsStatic: true } ? t.StaticDims() : null;
    }

    /// <summary>numpy matmul: 1-D operands are promoted, batch dims broadcast.</summary>
    public static double? MatMul(long[]? a, long[]? b)
    {
        if (a == null || b == null || a.Length == 0 || b.Length == 0) return null;
        if (a.Length == 1) a = [1, a[0]];
        if (b.Length == 1) b = [b[0], 1];
        long m = a[^2], k = a[^1], n = b[^1];
        if (b[^2] != k) return null;
        int rank = Math.Max(a.Length, b.Length) - 2;
        double batch = 1;
        for (int i = 0; i < rank; i++)
        {
            long da = i < rank - (a.Length - 2) ? 1 : a[i - (rank - (a.Length - 2))];
            long db = i < rank - (b.Length - 2) ? 1 : b[i - (rank - (b.Length - 2))];
            batch *= Math.Max(da, db);
        }
        return 2.0 * batch * m * n * k;
    }

    static double? Gemm(Node n, long[]? a, long[]? b)
    {
        if (a is not { Length: 2 } || b is not { Length: 2 }) return null;
        long m = n.GetInt("transA", 0) != 0 ? a[1] : a[0], k = n.GetInt("transA", 0) != 0 ? a[0] : a[1];
        long nn = n.GetInt("transB", 0) != 0 ? b[0] : b[1];
        return 2.0 * m * nn * k;
    }

    /// <summary>2 x N x Cout x prod(output spatial) x (Cin / group) x prod(kernel).</summary>
    static double? Conv(Node n, long[]? w, long[]? y)
    {
        if (w == null || y == null || w.Length < 3 || y.Length != w.Length) return null;
        double f = 2.0 * y[0] * y[1] * w[1];
        for (int i = 2; i < y.Length; i++) f *= y[i] * w[i];
        return f;
    }

    /// <summary>Each input pixel scatters a (Cout / group) x prod(kernel) patch: 2 x N x Cin x prod(input spatial) x (Cout / group) x prod(kernel).</summary>
    static double? ConvTranspose(Node n, long[]? x, long[]? w)
    {
        if (x == null || w == null || w.Length < 3 || x.Length != w.Length) return null;
        double f = 2.0 * x[0] * x[1] * w[1];
        for (int i = 2; i < x.Length; i++) f *= x[i] * w[i];
        return f;
    }
}
