using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>ReduceSum, ReduceMean, ReduceSumSquare, ReduceMax/Min: the output gradient is broadcast back over the reduced axes.</summary>
public static class ReductionRules
{
    public static void Register(GradientRegistry r)
    {
        r.Add("ReduceSum", c => c.SetGI(0, ExpandBack(c, c.GO(0)!)), inputs: [0]);
        r.Add("ReduceMean", c =>
        {
            var g = ExpandBack(c, c.GO(0)!);
            c.SetGI(0, c.B.Div(g, Count(c)));
        }, inputs: [0]);
        r.Add("ReduceSumSquare", c =>
        {
            var g = ExpandBack(c, c.GO(0)!);
            c.SetGI(0, c.B.Mul(g, c.B.Mul(c.I(0), c.ScalarLike(2, c.I(0)))));
        }, inputs: [0]);
        r.Add("ReduceMax", ExtremumRule, inputs: [0]);
        r.Add("ReduceMin", ExtremumRule, inputs: [0]);
    }

    /// <summary>The reduced axes (normalized), or every axis when none are given.</summary>
    public static long[] Axes(GradientContext c)
    {
        int rank = c.Rank(c.I(0));
        long[]? axes = c.Node.GetInts("axes");
        if (axes == null && c.Node.HasInput(1))
            axes = (c.ConstantInput(1) ?? throw new CompileException($"{c.Node.Describe()}: axes must be a constant to differentiate")).ToInt64s();
        if (axes == null || axes.Length == 0)
        {
            if (c.GetInt("noop_with_empty_axes", 0) == 1) return [];
            return Enumerable.Range(0, rank).Select(a => (long)a).ToArray();
        }
        return axes.Select(a => (long)GradientContext.NormAxis(a, rank)).OrderBy(a => a).ToArray();
    }

    /// <summary>Output gradient (or any value shaped like the output) broadcast back to the input's shape.</summary>
    public static string ExpandBack(GradientContext c, string g)
    {
        var axes = Axes(c);
        if (axes.Length == 0) return g;
        if (c.GetInt("keepdims", 1) == 0) g = c.B.Unsqueeze(g, axes);
        return c.B.Expand(g, c.B.Shape(c.I(0)));
    }

    /// <summary>Number of elements reduced into each output element, in the input's dtype.</summary>
    static string Count(GradientContext c)
    {
        var axes = Axes(c);
        var shape = c.ShapeOf(c.I(0));
        if (axes.All(a => shape[a].IsKnown))
            return c.ScalarLike(axes.Aggregate(1L, (p, a) => p * shape[a].Value!.Value), c.I(0));
        var n = c.B.Div(c.B.Op("Size", [c.I(0)]), c.B.Op("Size", [c.O(0)]));
        return c.B.Cast(n, c.ElemType(c.I(0)));
    }

    /// <summary>ReduceMax/Min: the gradient goes to the elements equal to the result, split among ties.</summary>
    static void ExtremumRule(GradientContext c)
    {
        var t = c.ElemType(c.I(0));
        var y = c.GetInt("keepdims", 1) == 0 && Axes(c).Length > 0 ? c.B.Unsqueeze(c.O(0), Axes(c)) : c.O(0);
        var mask = c.B.Cast(c.B.Op("Equal", [c.I(0), y]), t);
        var ties = c.Opset >= 13
            ? c.B.Op("ReduceSum", [mask, c.B.Ints(Axes(c))], OrtFinetune.Onnx.NodeAttribute.Of("keepdims", 1L))
            : c.B.ReduceSum(mask, Axes(c), true);
        var g = c.GetInt("keepdims", 1) == 0 && Axes(c).Length > 0 ? c.B.Unsqueeze(c.GO(0)!, Axes(c)) : c.GO(0)!;
        c.SetGI(0, c.B.Mul(mask, c.B.Div(g, ties)));
    }
}
