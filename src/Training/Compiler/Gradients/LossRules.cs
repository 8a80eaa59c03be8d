using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss (gradient wrt the scores / log-probabilities only).</summary>
public static class LossRules
{
    public static void Register(GradientRegistry r)
    {
        // Scores x (N, C, d...), labels l (N, d...), optional class weights w (C); p = softmax(x, axis 1).
        // loss: dx = (p - onehot(l)) * w[l] * gsample, where gsample is g (none), g (sum) or
        //   g / Σ w[l] over the non-ignored samples (mean); ignored samples get 0.
        // log_prob: dx = g_lp - p * Σ_C g_lp.
        r.Add("SoftmaxCrossEntropyLoss", c =>
        {
            var x = c.I(0);
            var lp = c.EnsureOutput(1, "log_prob");
            var p = c.B.Op("Exp", [lp]);
            var parts = new List<string>();
            if (c.GO(0) != null)
            {
                var (onehot, factor) = PerSample(c);
                parts.Add(c.B.Mul(c.B.Sub(p, onehot), factor));
            }
            if (c.GO(1) is { } glp)
                parts.Add(c.B.Sub(glp, c.B.Mul(p, c.B.ReduceSum(glp, [1], keepDims: true))));
            c.SetGI(0, c.B.Sum(parts));
        }, inputs: [0], outputs: [0, 1]);

        // Input x (N, C, d...) of log-probabilities: loss_i = -x[i, l_i] * w[l_i].
        // dx = -onehot(l) * w[l] * gsample (gsample as for SoftmaxCrossEntropyLoss).
        r.Add("NegativeLogLikelihoodLoss", c =>
        {
            var (onehot, factor) = PerSample(c);
            c.SetGI(0, c.B.Neg(c.B.Mul(onehot, factor)));
        }, inputs: [0], outputs: [0]);
    }

    /// <summary>
    /// The one-hot labels (N, C, d...) in the scores' dtype, and the per-sample factor (N, 1, d...):
    /// the output gradient spread over the samples, times the sample's class weight, zero where the
    /// label equals ignore_index.
    /// </summary>
    static (string OneHot, string Factor) PerSample(GradientContext c)
    {
        var x = c.I(0);
        var labels = c.I(1);
        var t = c.ElemType(x);
        var lt = c.ElemType(labels);
        int rank = c.Rank(x);
        if (rank < 2) throw new CompileException($"{c.Node.Describe()}: scores of rank {rank}; expected (N, C, ...)");
        var reduction = c.Node.GetString("reduction", "mean");
        if (reduction is not ("mean" or "sum" or "none"))
            throw new CompileException($"{c.Node.Describe()}: unknown reduction '{reduction}'");

        // (C, 1, ..., 1): class ids to compare with the labels unsqueezed to (N, 1, d...).
        var ones = Enumerable.Repeat(1L, rank - 2).ToArray();
        string classes;
        if (c.StaticDim(x, 1) is { } nc)
            classes = c.B.Const(Tensor.OfType("", lt, Enumerable.Range(0, (int)nc).Select(i => (double)i).ToArray(), [nc, .. ones]), "classes");
        else
        {
            var n = c.B.Squeeze(c.B.ShapeSlice(x, 1, 2), 0);
            var range = c.B.Op("Range", [c.B.IntScalar(0), n, c.B.IntScalar(1)]);
            if (lt != DataType.Int64) range = c.B.Cast(range, lt);
            classes = rank > 2 ? c.B.Unsqueeze(range, Enumerable.Range(1, rank - 2).Select(a => (long)a).ToArray()) : range;
        }
        var l1 = c.B.Unsqueeze(labels, 1);
        var onehot = c.B.Cast(c.B.Op("Equal", [l1, classes]), t);

        // per-sample weight (N, 1, d...): w[l] masked by l != ignore_index; null means all ones
        string? weight = null;
        if (c.Node.HasInput(2))
        {
            var w = c.I(2);
            if (c.ElemType(w) != t) w = c.B.Cast(w, t);
            if (rank > 2) w = c.B.Unsqueeze(w, Enumerable.Range(1, rank - 2).Select(a => (long)a).ToArray());
            // an out-of-range label has an all-zero one-hot row, so it selects weight 0
            weight = c.B.ReduceSum(c.B.Mul(onehot, w), [1], keepDims: true);
        }
        if (c.Node.Attr("ignore_index") is { } ig)
        {
            var keep = c.B.Cast(c.B.Op("Not", [c.B.Op("Equal", [l1, c.B.Scalar(ig.I, lt)])]), t);
            weight = weight == null ? keep : c.B.Mul(weight, keep);
        }

        var g = c.GO(0)!;
        string factor;
        switch (reduction)
        {
            case "none":
                var gu = c.B.Unsqueeze(g, 1);
                factor = weight == null ? gu : c.B.Mul(gu, weight);
                break;
            case "sum":
                factor = weight == null ? g : c.B.Mul(g, weight);
                break;
            default:
                string denom = weight == null
                    ? c.B.Cast(c.B.Op("Size", [labels]), t)
                    : c.B.Op("ReduceSum", [weight], OrtFinetune.Onnx.NodeAttribute.Of("keepdims", 0L));
                var gm = c.B.Div(g, denom);
                factor = weight == null ? gm : c.B.Mul(gm, weight);
                break;
        }
        // "sum"/"mean" without weights leave a scalar factor: onehot * factor still has the full shape
        return (onehot, factor);
    }
}
