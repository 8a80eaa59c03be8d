using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>Softmax, LogSoftmax, LayerNormalization and BatchNormalization.</summary>
public static class NormalizationRules
{
    public static void Register(GradientRegistry r)
    {
        // y = softmax(x): dx = y * (g - sum(g * y))
        r.Add("Softmax", c =>
        {
            var (g, y) = (c.GO(0)!, c.O(0));
            var gy = c.B.Mul(g, y);
            c.SetGI(0, c.B.Mul(y, c.B.Sub(g, c.B.ReduceSum(gy, SoftmaxAxes(c), keepDims: true))));
        });
        // y = log_softmax(x): dx = g - exp(y) * sum(g)
        r.Add("LogSoftmax", c =>
        {
            var (g, y) = (c.GO(0)!, c.O(0));
            var s = c.B.ReduceSum(g, SoftmaxAxes(c), keepDims: true);
            c.SetGI(0, c.B.Sub(g, c.B.Mul(c.B.Op("Exp", [y]), s)));
        });
        r.Add("LayerNormalization", LayerNorm, inputs: [0, 1, 2], outputs: [0]);
        r.Add("BatchNormalization", BatchNorm, inputs: [0, 1, 2], outputs: [0]);
    }

    /// <summary>
    /// The softmax reduction axes: the single <c>axis</c> from opset 13 (default -1); before it the
    /// input is coerced to 2-D at <c>axis</c> (default 1), so every axis from <c>axis</c> on.
    /// </summary>
    static long[] SoftmaxAxes(GradientContext c)
    {
        int rank = c.Rank(c.I(0));
        if (rank == 0) throw new CompileException($"{c.Node.Describe()}: softmax of a 0-D tensor");
        if (c.Opset >= 13) return [GradientContext.NormAxis(c.GetInt("axis", -1), rank)];
        int a = GradientContext.NormAxis(c.GetInt("axis", 1), rank);
        return Enumerable.Range(a, rank - a).Select(i => (long)i).ToArray();
    }

    /// <summary><paramref name="v"/> in the element type of <paramref name="like"/> (cast unless its type is known to match).</summary>
    static string CastLike(GradientContext c, string v, string like)
    {
        var t = c.ElemType(like);
        return c.Graph.TypeOf(v) is { ElemType: var vt } && vt == t ? v : c.B.Cast(v, t);
    }

    /// <summary><paramref name="v"/>, typed like forward value <paramref name="from"/>, in the element type of <paramref name="to"/>.</summary>
    static string Convert(GradientContext c, string v, string from, string to) =>
        c.ElemType(from) == c.ElemType(to) ? v : c.B.Cast(v, c.ElemType(to));

    /// <summary>
    /// LayerNormalization over axes [axis, rank): with xhat = (x - mean) * invstd (the node's Mean and
    /// InvStdDev outputs), gy = g * scale, N the normalized size:
    /// dx = invstd * (gy - mean(gy) - xhat * mean(gy * xhat)); dscale = Σ g * xhat; dB = Σ g
    /// (the last two reduced over the broadcast axes of scale/B).
    /// </summary>
    static void LayerNorm(GradientContext c)
    {
        var g = c.GO(0)!;
        var x = c.I(0);
        int rank = c.Rank(x);
        int axis = GradientContext.NormAxis(c.GetInt("axis", -1), rank);
        if (axis < 0 || axis >= rank) throw new CompileException($"{c.Node.Describe()}: axis {c.GetInt("axis", -1)} is out of range for rank {rank}");
        var axes = Enumerable.Range(axis, rank - axis).Select(i => (long)i).ToArray();
        var mean = CastLike(c, c.EnsureOutput(1, "mean"), x);
        var invStd = CastLike(c, c.EnsureOutput(2, "inv_std_dev"), x);
        var xhat = c.B.Mul(c.B.Sub(x, mean), invStd);
        if (c.Need(2)) c.SetGI(2, c.Unbroadcast(g, c.I(2), x));
        if (c.Need(1)) c.SetGI(1, c.Unbroadcast(c.B.Mul(g, xhat), c.I(1), x));
        if (c.Need(0))
        {
            var gy = c.B.Mul(g, c.I(1));
            var m1 = c.B.ReduceMean(gy, axes, keepDims: true);
            var m2 = c.B.ReduceMean(c.B.Mul(gy, xhat), axes, keepDims: true);
            c.SetGI(0, c.B.Mul(invStd, c.B.Sub(c.B.Sub(gy, m1), c.B.Mul(xhat, m2))));
        }
    }

    /// <summary>
    /// BatchNormalization over every axis except 1 (channels).
    /// Training mode (statistics of the batch, recomputed here: the node's extra outputs are the
    /// updated running statistics): xhat = (x - mean_b) * invstd_b,
    /// dx = scale * invstd_b * (g - mean(g) - xhat * mean(g * xhat)).
    /// Inference mode (the mean/var inputs): dx = g * scale * invstd.
    /// Both: dscale = Σ g * xhat, dB = Σ g. The running statistics get no gradient.
    /// </summary>
    static void BatchNorm(GradientContext c)
    {
        var g = c.GO(0)!;
        var x = c.I(0);
        int rank = c.Rank(x);
        if (rank < 2) throw new CompileException($"{c.Node.Describe()}: input of rank {rank}; BatchNormalization needs (N, C, ...)");
        if (c.Opset < 9 && c.Node.Attr("spatial") is { I: 0 })
            throw new CompileException($"{c.Node.Describe()}: spatial=0 (per-activation statistics) is not supported");
        bool training = c.Opset >= 14
            ? c.GetInt("training_mode", 0) != 0
            : c.Node.Outputs.Skip(1).Any(o => o.Length > 0);
        var axes = Enumerable.Range(0, rank).Where(a => a != 1).Select(a => (long)a).ToArray();
        // (C) -> (C, 1, ..., 1) so it broadcasts against (N, C, d1, ...)
        string PerChannel(string v) => rank > 2 ? c.B.Unsqueeze(v, Enumerable.Range(1, rank - 2).Select(a => (long)a).ToArray()) : v;
        var eps = c.ScalarLike(c.GetFloat("epsilon", 1e-5f), x);

        string xhat, invStd;
        if (training)
        {
            var mean = c.B.ReduceMean(x, axes, keepDims: true);
            var xc = c.B.Sub(x, mean);
            var variance = c.B.ReduceMean(c.B.Mul(xc, xc), axes, keepDims: true);
            invStd = c.B.Op("Reciprocal", [c.B.Op("Sqrt", [c.B.Add(variance, eps)])]);
            xhat = c.B.Mul(xc, invStd);
        }
        else
        {
            var mean = PerChannel(CastLike(c, c.I(3), x));
            var variance = PerChannel(CastLike(c, c.I(4), x));
            invStd = c.B.Op("Reciprocal", [c.B.Op("Sqrt", [c.B.Add(variance, eps)])]);
            xhat = c.B.Mul(c.B.Sub(x, mean), invStd);
        }
        // scale and B may have their own dtype (opset 15's T1)
        if (c.Need(2)) c.SetGI(2, Convert(c, c.B.ReduceSum(g, axes, keepDims: false), x, c.I(2)));
        if (c.Need(1)) c.SetGI(1, Convert(c, c.B.ReduceSum(c.B.Mul(g, xhat), axes, keepDims: false), x, c.I(1)));
        if (c.Need(0))
        {
            var k = c.B.Mul(PerChannel(Convert(c, c.I(1), c.I(1), x)), invStd);
            if (training)
            {
                var m1 = c.B.ReduceMean(g, axes, keepDims: true);
                var m2 = c.B.ReduceMean(c.B.Mul(g, xhat), axes, keepDims: true);
                c.SetGI(0, c.B.Mul(k, c.B.Sub(c.B.Sub(g, m1), c.B.Mul(xhat, m2))));
            }
            else c.SetGI(0, c.B.Mul(g, k));
        }
    }
}
