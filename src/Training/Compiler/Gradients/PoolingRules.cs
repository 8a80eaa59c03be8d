using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.</summary>
public static class PoolingRules
{
    public static void Register(GradientRegistry r)
    {
        r.Add("MaxPool", MaxPool, inputs: [0], outputs: [0]);
        r.Add("AveragePool", AveragePool, inputs: [0], outputs: [0]);
        r.Add("GlobalAveragePool", GlobalAveragePool, inputs: [0]);
        r.Add("GlobalMaxPool", GlobalMaxPool, inputs: [0]);
    }

    /// <summary>
    /// dX = scatter-add of dY into a flat zero tensor at the Indices output (flat positions of each window's
    /// maximum in X), reshaped to X's shape. Overlapping windows accumulate; ties go to the element MaxPool chose.
    /// </summary>
    static void MaxPool(GradientContext c)
    {
        var (b, x) = (c.B, c.I(0));
        if (c.GetInt("storage_order", 0) != 0)
            throw new CompileException($"{c.Node.Describe()}: storage_order=1 is not supported for the gradient");
        if (c.Opset < 16)
            throw new CompileException($"{c.Node.Describe()}: the MaxPool gradient needs ScatterElements with reduction=\"add\" (opset >= 16); the model has opset {c.Opset}");
        var indices = c.EnsureOutput(1, "indices", c.Graph.TypeOf(c.O(0)) is { } yt ? yt with { ElemType = DataType.Int64 } : null);
        var flat = b.Ints(-1);
        var zeros = b.Reshape(b.ZerosLike(x, c.ElemType(x)), flat);
        var dx = b.Op("ScatterElements", [zeros, b.Reshape(indices, flat), b.Reshape(c.G, flat)],
            NodeAttribute.Of("axis", 0L), NodeAttribute.Of("reduction", "add"));
        c.SetGI(0, b.Reshape(dx, b.Shape(x)));
    }

    /// <summary>
    /// dX[p] = Σ over windows w containing p of dY[w] / count(w). The division is by a constant map of window
    /// sizes (count_include_pad, ceil_mode and borders decided statically), then a depthwise ConvTranspose
    /// with a kernel of ones spreads each window's share over the window.
    /// </summary>
    static void AveragePool(GradientContext c)
    {
        var (b, node, x) = (c.B, c.Node, c.I(0));
        var kernel = node.GetInts("kernel_shape") ?? throw new CompileException($"{node.Describe()}: kernel_shape is required");
        var geo = MatMulConvRules.ReadGeometry(c, kernel, ceilMode: c.GetInt("ceil_mode", 0) != 0);
        if (geo.Dilations.Any(d => d != 1))
            throw new CompileException($"{node.Describe()}: AveragePool with dilations is not supported for the gradient");
        bool includePad = c.GetInt("count_include_pad", 0) != 0;
        int n = geo.N;
        var t = c.ElemType(x);

        // 1. dY / window size (a constant over the output's spatial grid)
        var perAxis = new long[n][];
        for (int i = 0; i < n; i++)
        {
            perAxis[i] = new long[geo.Out[i]];
            for (long o = 0; o < geo.Out[i]; o++)
            {
                long start = o * geo.Strides[i] - geo.PadsBegin[i];
                long end = Math.Min(start + kernel[i], geo.In[i] + geo.PadsEnd[i]);
                perAxis[i][o] = includePad ? end - start : Math.Min(end, geo.In[i]) - Math.Max(start, 0);
            }
        }
        var recip = new double[geo.Out.Aggregate(1L, (p, v) => p * v)];
        for (long flat = 0; flat < recip.Length; flat++)
        {
            long rest = flat, size = 1;
            for (int i = n - 1; i >= 0; i--) { size *= perAxis[i][rest % geo.Out[i]]; rest /= geo.Out[i]; }
            recip[flat] = 1.0 / size;
        }
        var g = c.G * (recip.All(v => v == recip[0]) ? x.Const(recip[0]) : c.Val(b.Const(Tensor.OfType("", t, recip, geo.Out), "avgpool_recip_count")));

        // 2. spread over the windows: ConvTranspose per channel with a kernel of ones
        var padsEnd = new long[n];
        var outPad = new long[n];
        for (int i = 0; i < n; i++)
        {
            long full = geo.Strides[i] * (geo.Out[i] - 1) + kernel[i];
            padsEnd[i] = Math.Max(geo.PadsEnd[i], full - geo.PadsBegin[i] - geo.In[i]); // ceil_mode windows may overhang
            outPad[i] = geo.In[i] + geo.PadsBegin[i] + padsEnd[i] - full;
        }
        var ones = b.Const(Tensor.OfType("", t, Enumerable.Repeat(1.0, (int)kernel.Aggregate(1L, (p, v) => p * v)).ToArray(), [1, 1, .. kernel]), "avgpool_ones");
        var g1 = b.Reshape(g, b.Ints([-1, 1, .. geo.Out]));
        var attrs = new List<NodeAttribute>
        {
            NodeAttribute.Of("kernel_shape", kernel), NodeAttribute.Of("strides", geo.Strides), NodeAttribute.Of("pads", [.. geo.PadsBegin, .. padsEnd]),
        };
        if (outPad.Any(p => p != 0)) attrs.Add(NodeAttribute.Of("output_padding", outPad));
        var dx = b.Op("ConvTranspose", [g1, ones], attrs.ToArray());
        c.SetGI(0, b.Reshape(dx, c.ReshapeTarget(x)));
    }

    /// <summary>dX = broadcast(dY) / (number of spatial elements).</summary>
    static void GlobalAveragePool(GradientContext c)
    {
        var (x, xs) = (c.I(0), c.ShapeOf(c.I(0)));
        var count = xs.Skip(2).All(d => d.IsKnown) ? x.Const(xs.Skip(2).Aggregate(1L, (p, d) => p * d.Value!.Value)) : (x.Size() / c.O(0).Size()).Cast(x.Type);
        c.SetGI(0, (c.G / count).Expand(x.Shape()));
    }

    /// <summary>dX = dY at the elements equal to the channel maximum, split evenly among ties.</summary>
    static void GlobalMaxPool(GradientContext c)
    {
        var mask = c.I(0).Eq(c.O(0)).CastLike(c.I(0));
        c.SetGI(0, mask * (c.G / mask.Sum(GradientContext.Axes(2, c.Rank(c.I(0))))));
    }
}
