using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>Softmax, LogSoftmax, LayerNormalization and BatchNormalization.</summary>
public static class NormalizationRules
{
    public static void Register(GradientRegistry r)
    {
        // y = softmax(x): dx = y (g - Σ g y)
        r.Add("Softmax", c => c.SetGI(0, c.O(0) * (c.G - (c.G * c.O(0)).Sum(SoftmaxAxis(c)))));
        // y = log_softmax(x): dx = g - e^y Σ g
        r.Add("LogSoftmax", c => { var s = c.G.Sum(SoftmaxAxis(c)); c.SetGI(0, c.G - c.O(0).Exp() * s); });
        r.Add("LayerNormalization", LayerNorm, inputs: [0, 1, 2], outputs: [0]);
        r.Add("BatchNormalization", BatchNorm, inputs: [0, 1, 2], outputs: [0]);
    }

    /// <summary>The softmax axis (opset 13+: one axis, default -1).</summary>
    static long[] SoftmaxAxis(GradientContext c)
    {
        int rank = c.Rank(c.I(0));
        if (rank == 0) throw new CompileException($"{c.Node.Describe()}: softmax of a 0-D tensor");
        return [GradientContext.NormAxis(c.GetInt("axis", -1), rank)];
    }

    /// <summary>
    /// LayerNormalization over axes [axis, rank): with xhat = (x - mean) * invstd (the node's Mean and
    /// InvStdDev outputs), gy = g * scale: dx = invstd (gy - mean(gy) - xhat mean(gy xhat));
    /// dscale = Σ g xhat; dB = Σ g (the last two reduced over the broadcast axes of scale/B).
    /// </summary>
    static void LayerNorm(GradientContext c)
    {
        var (g, x) = (c.G, c.I(0));
        int rank = c.Rank(x);
        int axis = GradientContext.NormAxis(c.GetInt("axis", -1), rank);
        if (axis < 0 || axis >= rank) throw new CompileException($"{c.Node.Describe()}: axis {c.GetInt("axis", -1)} is out of range for rank {rank}");
        var axes = GradientContext.Axes(axis, rank);
        var mean = c.EnsureOutput(1, "mean").CastLike(x);
        var invStd = c.EnsureOutput(2, "inv_std_dev").CastLike(x);
        var xhat = (x - mean) * invStd;
        if (c.Need(2)) c.SetGI(2, c.Unbroadcast(g, c.I(2), x));
        if (c.Need(1)) c.SetGI(1, c.Unbroadcast(g * xhat, c.I(1), x));
        c.SetGI(0, () => { var gy = g * c.I(1); return invStd * (gy - gy.Mean(axes) - xhat * (gy * xhat).Mean(axes)); });
    }

    /// <summary>
    /// BatchNormalization over every axis except 1 (channels).
    /// Training mode (statistics of the batch, recomputed here: the node's extra outputs are the
    /// updated running statistics): xhat = (x - mean_b) * invstd_b,
    /// dx = scale invstd_b (g - mean(g) - xhat mean(g xhat)).
    /// Inference mode (the mean/var inputs): dx = g scale invstd.
    /// Both: dscale = Σ g xhat, dB = Σ g. The running statistics get no gradient.
    /// </summary>
    static void BatchNorm(GradientContext c)
    {
        var (g, x) = (c.G, c.I(0));
        int rank = c.Rank(x);
        if (rank < 2) throw new CompileException($"{c.Node.Describe()}: input of rank {rank}; BatchNormalization needs (N, C, ...)");
        // opset 14 added training_mode; in opset 13 the running-statistics outputs mean training
        bool training = c.Opset >= 14 ? c.GetInt("training_mode", 0) != 0 : c.Node.Outputs.Skip(1).Any(o => o.Length > 0);
        var axes = Enumerable.Range(0, rank).Where(a => a != 1).Select(a => (long)a).ToArray();
        // (C) -> (C, 1, ..., 1) so it broadcasts against (N, C, d1, ...)
        V PerChannel(V v) => rank > 2 ? v.Unsqueeze(GradientContext.Axes(1, rank - 1)) : v;
        double eps = c.GetFloat("epsilon", 1e-5f);
        V xhat, invStd;
        if (training)
        {
            var xc = x - x.Mean(axes);
            invStd = ((xc * xc).Mean(axes) + eps).Sqrt().Reciprocal();
            xhat = xc * invStd;
        }
        else
        {
            var mean = PerChannel(c.I(3).CastLike(x));
            invStd = (PerChannel(c.I(4).CastLike(x)) + eps).Sqrt().Reciprocal();
            xhat = (x - mean) * invStd;
        }
        // scale and B may have their own dtype (opset 15's T1)
        c.SetGI(2, () => g.Sum(axes, keepDims: false).CastLike(c.I(2)));
        c.SetGI(1, () => (g * xhat).Sum(axes, keepDims: false).CastLike(c.I(1)));
        c.SetGI(0, () =>
        {
            var k = PerChannel(c.I(1).CastLike(x)) * invStd;
            return training ? k * (g - g.Mean(axes) - xhat * (g * xhat).Mean(axes)) : g * k;
        });
    }
}
