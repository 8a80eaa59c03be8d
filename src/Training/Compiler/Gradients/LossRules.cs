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
            var p = c.EnsureOutput(1, "log_prob").Exp();
            var parts = new List<string>();
            if (c.GO(0) != null) { var (onehot, factor) = PerSample(c); parts.Add((p - onehot) * factor); }
            if (c.GO(1) is { } glp) parts.Add(glp - p * glp.Sum([1]));
            c.SetGI(0, c.B.Sum(parts));
        }, inputs: [0], outputs: [0, 1]);

        // Input x (N, C, d...) of log-probabilities: loss_i = -x[i, l_i] * w[l_i].
        // dx = -onehot(l) * w[l] * gsample (gsample as for SoftmaxCrossEntropyLoss).
        r.Add("NegativeLogLikelihoodLoss", c => { var (onehot, factor) = PerSample(c); c.SetGI(0, -(onehot * factor)); }, inputs: [0], outputs: [0]);
    }

    /// <summary>
    /// The one-hot labels (N, C, d...) in the scores' dtype, and the per-sample factor (N, 1, d...):
    /// the output gradient spread over the samples, times the sample's class weight, zero where the
    /// label equals ignore_index.
    /// </summary>
    static (V OneHot, V Factor) PerSample(GradientContext c)
    {
        var (x, labels, g) = (c.I(0), c.I(1), c.G);
        var (t, lt) = (c.ElemType(x), c.ElemType(labels));
        int rank = c.Rank(x);
        if (rank < 2) throw new CompileException($"{c.Node.Describe()}: scores of rank {rank}; expected (N, C, ...)");
        var reduction = c.Node.GetString("reduction", "mean");
        if (reduction is not ("mean" or "sum" or "none"))
            throw new CompileException($"{c.Node.Describe()}: unknown reduction '{reduction}'");
        var spatial = GradientContext.Axes(1, rank - 1);

        // (C, 1, ..., 1): class ids to compare with the labels unsqueezed to (N, 1, d...).
        V classes;
        if (c.StaticDim(x, 1) is { } nc)
            classes = c.Val(c.B.Const(Tensor.OfType("", lt, Enumerable.Range(0, (int)nc).Select(i => (double)i).ToArray(), [nc, .. Enumerable.Repeat(1L, rank - 2)]), "classes"));
        else
        {
            var range = new V(c.B, c.B.Op("Range", [c.B.IntScalar(0), c.B.Squeeze(c.B.ShapeSlice(x, 1, 2), 0), c.B.IntScalar(1)]), DataType.Int64).Cast(lt);
            classes = rank > 2 ? range.Unsqueeze(spatial) : range;
        }
        var l1 = labels.Unsqueeze(1);
        var onehot = l1.Eq(classes).Cast(t);

        // per-sample weight (N, 1, d...): w[l] masked by l != ignore_index; null means all ones.
        // An out-of-range label has an all-zero one-hot row, so it selects weight 0.
        V? weight = null;
        if (c.Node.HasInput(2))
        {
            var w = c.I(2).Cast(t);
            weight = (onehot * (rank > 2 ? w.Unsqueeze(spatial) : w)).Sum([1]);
        }
        if (c.Node.Attr("ignore_index") is { } ig)
        {
            var keep = (!l1.Eq(ig.I)).Cast(t);
            weight = weight == null ? keep : weight * keep;
        }
        // "sum"/"mean" without weights leave a scalar factor: onehot * factor still has the full shape
        var gs = reduction switch
        {
            "none" => g.Unsqueeze(1),
            "sum" => g,
            _ => g / (weight == null ? labels.Size().Cast(t) : weight.Op("ReduceSum", [weight], null, OrtFinetune.Onnx.NodeAttribute.Of("keepdims", 0L))),
        };
        return (onehot, weight == null ? gs : gs * weight);
    }
}
