using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>
/// Data movement ops: reshapes, transposes, broadcasting, concatenation and splitting, slicing,
/// gathering, tiling and padding. Only the data inputs are differentiable; shapes, axes, indices,
/// starts/ends, repeats and pads are not. Sizes are taken from the forward values at run time
/// (Shape) so symbolic dimensions work; static sizes are used where they are known.
/// </summary>
public static class ShapeRules
{
    public static void Register(GradientRegistry r)
    {
        // Pure reshapes: dx = Reshape(g, shape of x) (a constant when x's shape is static but for one dimension)
        foreach (var op in new[] { "Reshape", "Flatten", "Squeeze", "Unsqueeze" })
            r.Add(op, c => c.SetGI(0, c.G.Reshape(c.ReshapeTarget(c.I(0)))), inputs: [0]);
        r.Add("Transpose", Transpose, inputs: [0]);
        r.Add("Expand", Expand, inputs: [0]);
        r.Add("Concat", Concat);
        r.Add("Split", Split, inputs: [0]);
        r.Add("Slice", Slice, inputs: [0]);
        r.Add("Gather", Gather, inputs: [0]);
        r.Add("GatherElements", GatherElements, inputs: [0]);
        r.Add("Tile", Tile, inputs: [0]);
        r.Add("Pad", Pad, inputs: [0]);
    }

    // ------------------------------------------------------------------ size helpers

    /// <summary>Size of axis <paramref name="a"/> of x as a 1-D [1] int64 (static when known).</summary>
    static string Dim1(GradientContext c, string x, int a) =>
        c.StaticDim(x, a) is { } d ? c.B.Ints(d) : c.B.ShapeSlice(x, a, a + 1);

    /// <summary>Size of axis <paramref name="a"/> of x as a 0-D int64 (static when known).</summary>
    static string Dim0(GradientContext c, string x, int a) =>
        c.StaticDim(x, a) is { } d ? c.B.IntScalar(d) : c.B.Squeeze(c.B.ShapeSlice(x, a, a + 1), 0);

    /// <summary>A 1-D int64 value of length <paramref name="rank"/>: 1 everywhere, -1 at <paramref name="axis"/>.</summary>
    static string AlongAxis(GradientContext c, int rank, int axis) =>
        c.B.Ints(Enumerable.Range(0, rank).Select(i => i == axis ? -1L : 1L).ToArray());

    static string ToInt64(GradientContext c, string v) =>
        c.Graph.TypeOf(v)?.ElemType == DataType.Int64 ? v : c.B.Cast(v, DataType.Int64);

    /// <summary>Int64 indices with negative entries wrapped: idx &lt; 0 ? idx + size : idx.</summary>
    static string WrapNegative(GradientContext c, string idx, string size) =>
        c.B.Where(c.B.Op("Less", [idx, c.B.IntScalar(0)]), c.B.Add(idx, size), idx);

    static long[] ConstInts(GradientContext c, int input, string what) =>
        (c.ConstantInput(input) ?? throw new CompileException($"{c.Node.Describe()}: {what} must be a constant to differentiate")).ToInt64s();

    // ------------------------------------------------------------------ rules

    /// <summary>Transpose(perm): dx = Transpose(g, inverse(perm)); default perm reverses the axes.</summary>
    static void Transpose(GradientContext c)
    {
        var perm = c.Node.GetInts("perm") ?? GradientContext.Axes(0, c.Rank(c.I(0))).Reverse().ToArray();
        c.SetGI(0, c.G.Transpose(GradientContext.InversePerm(perm)));
    }

    /// <summary>Expand(x, shape): dx = g summed over the broadcast axes (unbroadcast to x's shape).</summary>
    static void Expand(GradientContext c)
    {
        var (g, x) = (c.G, c.I(0));
        if (c.Graph.TypeOf(c.O(0))?.Shape != null) { c.SetGI(0, c.Unbroadcast(g, x)); return; }
        // Output rank not recorded: it is max(rank x, length of the shape input).
        int rx = c.Rank(x);
        long? len = c.ConstantInput(1)?.Dims is { Length: 1 } cd ? cd[0] : c.Graph.TypeOf(c.I(1))?.Shape is [{ Value: { } l }] ? l : null;
        if (len == null) throw new CompileException($"{c.Node.Describe()}: the rank of the expanded output is unknown; its gradient needs it");
        int lead = (int)Math.Max(0, len.Value - rx);
        if (lead > 0) g = g.Sum(GradientContext.Axes(0, lead), keepDims: false);
        // Remaining axes: sum where x has size 1 and the gradient does not (decided at run time).
        c.SetGI(0, c.SumWhereSizeOne(g, x.Shape()));
    }

    /// <summary>Concat(axis): each input's gradient is its slab of g along the axis (one Split, sizes from the inputs).</summary>
    static void Concat(GradientContext c)
    {
        int n = c.InputCount;
        int axis = GradientContext.NormAxis(c.GetInt("axis", 0), c.Rank(c.I(0)));
        if (n == 1) { c.SetGI(0, c.G); return; }
        var dims = Enumerable.Range(0, n).Select(i => c.StaticDim(c.I(i), axis)).ToArray();
        var sizes = dims.All(d => d != null)
            ? c.B.Ints(dims.Select(d => d!.Value).ToArray())
            : c.B.Concat(0, Enumerable.Range(0, n).Select(i => Dim1(c, c.I(i), axis)).ToArray());
        var parts = c.B.OpN("Split", [c.G, sizes], n, NodeAttribute.Of("axis", (long)axis));
        for (int i = 0; i < n; i++) c.SetGI(i, parts[i]);
    }

    /// <summary>Split: dx = Concat(axis, g_0, ..., g_{n-1}), zeros for outputs that receive no gradient.</summary>
    static void Split(GradientContext c)
    {
        var x = c.I(0);
        int axis = GradientContext.NormAxis(c.GetInt("axis", 0), c.Rank(x));
        var parts = Enumerable.Range(0, c.OutputCount).Select(i => c.GO(i)?.Name ?? c.B.ZerosLike(c.O(i), c.ElemType(x))).ToArray();
        c.SetGI(0, parts.Length == 1 ? parts[0] : c.B.Concat(axis, parts));
    }

    /// <summary>
    /// Slice: g is placed back into zeros shaped like x. With constant starts/ends, unit steps and
    /// static sizes on the sliced axes this is one Pad. Otherwise, per sliced axis, the positions are
    /// obtained by slicing Range(0, size) with the same start/end/step (so clamping and negative
    /// indices follow ORT's own Slice) and g is scattered there with ScatterElements.
    /// </summary>
    static void Slice(GradientContext c)
    {
        var (g, x) = (c.G, c.I(0));
        int rank = c.Rank(x);
        var starts = c.ConstantInput(1)?.ToInt64s();
        var ends = c.ConstantInput(2)?.ToInt64s();
        var axesC = c.Node.HasInput(3) ? ConstInts(c, 3, "the axes of Slice") : null;
        var steps = c.Node.HasInput(4) ? c.ConstantInput(4)?.ToInt64s() : null;
        long? len = starts?.Length ?? ends?.Length ?? axesC?.Length ?? steps?.Length;
        if (len == null && c.Graph.TypeOf(c.I(1))?.Shape is [{ Value: { } l }]) len = l;
        int n = (int)(len ?? throw new CompileException($"{c.Node.Describe()}: the number of sliced axes is unknown (starts has no static length)"));
        var axes = (axesC ?? GradientContext.Axes(0, n)).Select(a => GradientContext.NormAxis(a, rank)).ToArray();
        bool unitSteps = !c.Node.HasInput(4) || (steps != null && steps.All(s => s == 1));

        // Static case: one Pad.
        if (starts != null && ends != null && unitSteps && axes.All(a => c.StaticDim(x, a) != null))
        {
            var pads = new long[2 * rank];
            for (int j = 0; j < n; j++)
            {
                int a = axes[j];
                long d = c.StaticDim(x, a)!.Value;
                long s = Math.Clamp(starts[j] < 0 ? starts[j] + d : starts[j], 0, d);
                long e = Math.Clamp(ends[j] < 0 ? ends[j] + d : ends[j], 0, d);
                if (e < s) e = s;
                pads[a] = s; pads[rank + a] = d - e;
            }
            c.SetGI(0, pads.All(p => p == 0) ? g : c.B.Op("Pad", [g, c.B.Ints(pads)]));
            return;
        }

        string Piece(long[]? constant, int input, int j, long dflt) =>
            constant != null ? c.B.Ints(constant[j])
            : c.Node.HasInput(input) ? ToInt64(c, c.B.Slice(c.I(input), [j], [j + 1], [0]))
            : c.B.Ints(dflt);

        string cur = g;
        for (int j = 0; j < n; j++)
        {
            int a = axes[j];
            var range = c.B.Op("Range", [c.B.IntScalar(0), Dim0(c, x, a), c.B.IntScalar(1)]);
            var idx = c.B.Op("Slice", [range, Piece(starts, 1, j, 0), Piece(ends, 2, j, long.MaxValue), c.B.Ints(0), Piece(steps, 4, j, 1)]);
            var curShape = c.B.Shape(cur);
            var idxFull = c.B.Expand(c.B.Reshape(idx, AlongAxis(c, rank, a)), curShape);
            var pieces = new List<string>();
            if (a > 0) pieces.Add(c.B.Slice(curShape, [0], [a], [0]));
            pieces.Add(Dim1(c, x, a));
            if (a < rank - 1) pieces.Add(c.B.Slice(curShape, [a + 1], [rank], [0]));
            var zeros = c.B.Fill(pieces.Count == 1 ? pieces[0] : c.B.Concat(0, pieces.ToArray()), c.ElemType(x), 0);
            cur = c.B.Op("ScatterElements", [zeros, idxFull, cur], NodeAttribute.Of("axis", (long)a));
        }
        c.SetGI(0, cur);
    }

    /// <summary>
    /// Gather(axis): dx = zeros like data with g added at the gathered positions (repeated indices
    /// accumulate). Axis 0 uses ScatterND(add) with the indices as rows; other axes ScatterElements(add).
    /// Before opset 16 (no scatter reduction) a one-hot matrix product does the accumulation.
    /// </summary>
    static void Gather(GradientContext c)
    {
        var (g, data) = (c.G, c.I(0));
        int rank = c.Rank(data);
        int axis = GradientContext.NormAxis(c.GetInt("axis", 0), rank);
        var b = c.B;
        var size = Dim0(c, data, axis);
        var idx = WrapNegative(c, b.Reshape(ToInt64(c, c.I(1)), b.Ints(-1)), size);
        // g reshaped to data[:axis] + [K] + data[axis+1:], K = number of indices
        var pieces = new List<string>();
        if (axis > 0) pieces.Add(b.ShapeSlice(data, 0, axis));
        pieces.Add(b.Ints(-1));
        if (axis < rank - 1) pieces.Add(b.ShapeSlice(data, axis + 1, rank));
        var g2 = b.Reshape(g, pieces.Count == 1 ? pieces[0] : b.Concat(0, pieces.ToArray()));
        var t = c.ElemType(data);
        if (c.Opset >= 16)
        {
            var zeros = b.ZerosLike(data, t);
            c.SetGI(0, axis == 0
                ? b.Op("ScatterND", [zeros, b.Unsqueeze(idx, 1), g2], NodeAttribute.Of("reduction", "add"))
                : b.Op("ScatterElements", [zeros, b.Expand(b.Reshape(idx, AlongAxis(c, rank, axis)), b.Shape(g2)), g2],
                    NodeAttribute.Of("axis", (long)axis), NodeAttribute.Of("reduction", "add")));
            return;
        }
        // one-hot [K, size]; move K last, contract, move the size axis back into place
        var oneHot = b.Cast(b.Op("Equal", [b.Unsqueeze(idx, 1), b.Op("Range", [b.IntScalar(0), size, b.IntScalar(1)])]), t);
        var perm = Enumerable.Range(0, rank).Where(i => i != axis).Append(axis).Select(i => (long)i).ToArray();
        var prod = b.MatMul(rank == 1 ? g2 : b.Transpose(g2, perm), oneHot);
        c.SetGI(0, rank == 1 ? prod : b.Transpose(prod, GradientContext.InversePerm(perm)));
    }

    /// <summary>GatherElements(axis): dx = ScatterElements(zeros like data, indices, g, axis, reduction=add).</summary>
    static void GatherElements(GradientContext c)
    {
        if (c.Opset < 16) throw new CompileException($"{c.Node.Describe()}: GatherElements needs opset 16 or later to differentiate (ScatterElements reduction)");
        var (g, data) = (c.G, c.I(0));
        int axis = GradientContext.NormAxis(c.GetInt("axis", 0), c.Rank(data));
        var idx = WrapNegative(c, ToInt64(c, c.I(1)), Dim0(c, data, axis));
        c.SetGI(0, c.B.Op("ScatterElements", [c.B.ZerosLike(data, c.ElemType(data)), idx, g],
            NodeAttribute.Of("axis", (long)axis), NodeAttribute.Of("reduction", "add")));
    }

    /// <summary>
    /// Tile(x, repeats): y[.., r_i * d_i + k, ..] = x[.., k, ..], so g reshaped to
    /// [r_0, d_0, r_1, d_1, ...] summed over the r axes is dx.
    /// </summary>
    static void Tile(GradientContext c)
    {
        var (g, x) = (c.G, c.I(0));
        int rank = c.Rank(x);
        if (rank == 0) { c.SetGI(0, g); return; }
        var reps = c.ConstantInput(1)?.ToInt64s();
        var pieces = new List<string>();
        var dims = new long?[2 * rank];
        for (int i = 0; i < rank; i++)
        {
            dims[2 * i] = reps?[i]; dims[2 * i + 1] = c.StaticDim(x, i);
            pieces.Add(reps != null ? c.B.Ints(reps[i]) : ToInt64(c, c.B.Slice(c.I(1), [i], [i + 1], [0])));
            pieces.Add(Dim1(c, x, i));
        }
        var shape = dims.All(d => d != null) ? c.B.Ints(dims.Select(d => d!.Value).ToArray()) : c.B.Concat(0, pieces.ToArray());
        c.SetGI(0, g.Reshape(shape).Sum(Enumerable.Range(0, rank).Select(i => 2L * i).ToArray(), keepDims: false));
    }

    /// <summary>Pad (constant mode): dx = Pad(g, -pads), which crops what was added and zero-fills what was cropped.</summary>
    static void Pad(GradientContext c)
    {
        var mode = c.Node.GetString("mode", "constant");
        if (mode != "constant") throw new CompileException($"{c.Node.Describe()}: Pad mode '{mode}' is not supported for differentiation (only 'constant')");
        var neg = c.ConstantInput(1) is { } pc ? c.B.Ints(pc.ToInt64s().Select(p => -p).ToArray()) : c.B.Neg(c.I(1));
        var ins = new List<string> { c.G, neg };
        if (c.Node.HasInput(3)) { ins.Add(""); ins.Add(c.I(3)); }
        c.SetGI(0, c.B.Op("Pad", ins));
    }
}
