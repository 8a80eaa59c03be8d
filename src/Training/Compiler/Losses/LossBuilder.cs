using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Losses;

/// <summary>Loss settings, with PyTorch's <c>nn.CrossEntropyLoss</c> semantics.</summary>
public sealed record LossOptions
{
    /// <summary>"cross_entropy" (softmax cross-entropy on logits).</summary>
    public string Type { get; init; } = "cross_entropy";
    /// <summary>"mean" (over non-ignored samples) or "sum".</summary>
    public string Reduction { get; init; } = "mean";
    public double LabelSmoothing { get; init; }
    public long IgnoreIndex { get; init; } = -100;

    public void Validate()
    {
        if (Type != "cross_entropy") throw new CompileException($"loss type '{Type}' is not supported (supported: cross_entropy)");
        if (Reduction is not ("mean" or "sum")) throw new CompileException($"loss reduction '{Reduction}' is not supported for training (use mean or sum)");
        if (!(LabelSmoothing >= 0 && LabelSmoothing < 1)) throw new CompileException($"label smoothing {LabelSmoothing} must be in [0, 1)");
    }
}

/// <summary>Builds the loss on top of the forward graph, as composable ONNX blocks.</summary>
public static class LossBuilder
{
    /// <summary>
    /// Appends the loss of <paramref name="logits"/> (N, C, ...) against int64 <paramref name="labels"/>
    /// (N, ...) and returns the name of the scalar loss value.
    /// SoftmaxCrossEntropyLoss gives the NLL term; label smoothing ε adds PyTorch's
    /// ε/C · Σ_c(−log p_c), averaged over the non-ignored samples:
    /// loss = (1 − ε)·nll + ε/C · smooth.
    /// </summary>
    public static string CrossEntropy(GraphBuilder b, string logits, string labels, TensorType logitsType, LossOptions o, string lossName)
    {
        o.Validate();
        var attrs = new[] { NodeAttribute.Of("reduction", o.Reduction), NodeAttribute.Of("ignore_index", o.IgnoreIndex) };
        var t = logitsType.ElemType;
        if (o.LabelSmoothing == 0)
        {
            b.AddNode("SoftmaxCrossEntropyLoss", [logits, labels], [lossName], "", attrs);
            b.SetType(lossName, new TensorType(t, []));
            return lossName;
        }
        var c = logitsType.Shape is { Length: >= 2 } s && s[1].IsKnown ? s[1].Value!.Value
            : throw new CompileException($"label smoothing needs a static class count, but the logits have shape {logitsType}");
        var nll = b.Unique("nll");
        var logProb = b.Unique("log_prob");
        b.AddNode("SoftmaxCrossEntropyLoss", [logits, labels], [nll, logProb], "", attrs);
        b.SetType(nll, new TensorType(t, []));
        b.SetType(logProb, logitsType);
        var valid = b.Cast(b.Op("Not", [b.Op("Equal", [labels, b.IntScalar(o.IgnoreIndex)])]), t);
        var perSample = b.Mul(b.ReduceSum(logProb, [1], keepDims: false), valid);
        var smooth = b.Neg(b.ReduceSum(perSample, [], keepDims: false));
        if (o.Reduction == "mean") smooth = b.Div(smooth, b.ReduceSum(valid, [], keepDims: false));
        var total = b.Add(b.Mul(nll, b.Scalar(1 - o.LabelSmoothing, t)), b.Mul(smooth, b.Scalar(o.LabelSmoothing / c, t)));
        b.AddNode("Identity", [total], [lossName]);
        b.SetType(lossName, new TensorType(t, []));
        return lossName;
    }
}
