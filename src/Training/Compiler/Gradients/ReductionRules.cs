using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>ReduceSum, ReduceMean, ReduceSumSquare, ReduceMax/Min: the output gradient is broadcast back over the reduced axes.</summary>
public static class ReductionRules
{
    public static void Register(GradientRegistry r)
    {
        r.Add("ReduceSum", c => c.SetGI(0, ExpandBack(c, c.G)), inputs: [0]);
        r.Add("ReduceMean", c => c.SetGI(0, ExpandBack(c, c.G) / Count(c)), inputs: [0]);
        r.Add("ReduceSumSquare", c => c.SetGI(0, ExpandBack(c, c.G) * (c.I(0) * 2)), inputs: [0]);
        // ReduceMax/Min: the gradient goes to the elements equal to the result, split among ties
        foreach (var op in new[] { "ReduceMax", "ReduceMin" })
            r.Add(op, c =>
            {
                var mask = c.I(0).Eq(KeepDims(c, c.O(0))).CastLike(c.I(0));
                c.SetGI(0, mask * (KeepDims(c, c.G) / mask.Sum(Axes(c))));
            }, inputs: [0]);
    }

    /// <summary>The reduced axes (normalized), or every axis when none are given.</summary>
    public static long[] Axes(GradientContext c)
    {
        int rank = c.Rank(c.I(0));
        long[]? axes = c.Node.GetInts("axes");
        if (axes == null && c.Node.HasInput(1))
            axes = (c.ConstantInput(1) ?? throw new CompileException($"{c.Node.Describe()}: axes must be a constant to differentiate")).ToInt64s();
        if (axes == null || axes.Length == 0)
            return c.GetInt("noop_with_empty_axes", 0) == 1 ? [] : GradientContext.Axes(0, rank);
        return axes.Select(a => (long)GradientContext.NormAxis(a, rank)).OrderBy(a => a).ToArray();
    }

    /// <summary>A value shaped like the output with the reduced axes put back (size 1) when keepdims=0.</summary>
    static V KeepDims(GradientContext c, V v) => c.GetInt("keepdims", 1) == 0 && Axes(c).Length > 0 ? v.Unsqueeze(Axes(c)) : v;

    /// <summary>Output gradient (or any value shaped like the output) broadcast back to the input's shape.</summary>
    public static V ExpandBack(GradientContext c, V g) => Axes(c).Length == 0 ? g : KeepDims(c, g).Expand(c.I(0).Shape());

    /// <summary>Number of elements reduced into each output element, in the input's dtype.</summary>
    static V Count(GradientContext c)
    {
        var (x, shape) = (c.I(0), c.ShapeOf(c.I(0)));
        if (Axes(c).All(a => shape[a].IsKnown)) return x.Const(Axes(c).Aggregate(1L, (p, a) => p * shape[a].Value!.Value));
        return (x.Size() / c.O(0).Size()).Cast(x.Type);
    }
}
