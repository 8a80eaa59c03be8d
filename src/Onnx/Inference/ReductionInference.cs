namespace OrtFinetune.Onnx;

/// <summary>Reduce* (axes as attribute or input, keepdims, noop_with_empty_axes), ArgMax/ArgMin.</summary>
internal static class ReductionInference
{
    public static void Register(ShapeInferenceRules r)
    {
        r.Reg(Reduce, "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceProd",
            "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp");
        r.Reg(ArgReduce, "ArgMax", "ArgMin");
    }

    /// <summary>Whether the op takes axes as its second input at this opset.</summary>
    static bool AxesAsInput(string op, long opset) => op == "ReduceSum" ? opset >= 13 : opset >= 18;

    static void Reduce(InferContext c)
    {
        var t = c.Type(0);
        var et = t?.ElemType ?? DataType.Undefined;
        bool keep = c.Int("keepdims", 1) != 0;
        long[]? axes;
        bool axesKnown = true;
        if (AxesAsInput(c.Node.OpType, c.Opset) && c.Has(1))
        {
            axes = c.Ints(1);
            if (axes == null) { axesKnown = false; }
        }
        else axes = c.IntsAttr("axes") ?? (c.Has(1) ? c.Ints(1) : null);
        if (t?.Shape == null || !axesKnown)
        {
            // rank is still known with keepdims
            c.Set(0, et, keep && t?.Shape != null ? t.Shape.Select(_ => Dim.Unknown).ToArray() : null);
            return;
        }
        int rank = t.Shape.Length;
        if (axes == null || axes.Length == 0)
        {
            if (c.Int("noop_with_empty_axes", 0) != 0) { c.SameAs(0, 0); return; }
            axes = Enumerable.Range(0, rank).Select(x => (long)x).ToArray();
        }
        var set = axes.Select(a => c.Axis(a, rank)).ToHashSet();
        var shape = new List<Dim>();
        for (int k = 0; k < rank; k++)
            if (!set.Contains(k)) shape.Add(t.Shape[k]);
            else if (keep) shape.Add(new Dim(1));
        Dim[]? v = null;
        var iv = c.Value(0);
        if (iv != null && rank == 1 && set.Contains(0))
            v = c.Node.OpType switch
            {
                "ReduceProd" => [SymDim.Product(iv)],
                "ReduceSum" => [iv.Aggregate(new Dim(0), SymDim.Add)],
                "ReduceMax" when iv.Length > 0 => [iv.Aggregate(SymDim.Max)],
                "ReduceMin" when iv.Length > 0 => [iv.Aggregate(SymDim.Min)],
                _ => null,
            };
        c.Set(0, et, shape.ToArray(), v);
    }

    static void ArgReduce(InferContext c)
    {
        var s = c.Shape(0);
        if (s == null) { c.Set(0, DataType.Int64, null); return; }
        int axis = c.Axis(c.Int("axis", 0), s.Length);
        bool keep = c.Int("keepdims", 1) != 0;
        var shape = new List<Dim>();
        for (int k = 0; k < s.Length; k++)
            if (k != axis) shape.Add(s[k]);
            else if (keep) shape.Add(new Dim(1));
        c.Set(0, DataType.Int64, shape.ToArray());
    }
}
