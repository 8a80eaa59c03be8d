using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Autodiff;

/// <summary>
/// What a gradient rule sees: the forward node, its inputs I(i) and outputs O(i), the incoming
/// output gradients GO(i) (G for output 0), which input gradients are wanted (Need(i)), and a
/// builder to emit the backward nodes. Values are <see cref="V"/>s, so a rule is its formula:
/// <c>c.SetGI(0, c.G * y * (1 - y))</c>. A rule calls SetGI(i, value) for each needed input; the
/// <see cref="Func{V}"/> overloads build the value only when that input's gradient is wanted.
/// </summary>
public sealed class GradientContext
{
    readonly string?[] _outGrads;
    readonly bool[] _need;
    readonly string?[] _inGrads;

    public Node Node { get; }
    public GraphBuilder B { get; }
    public Graph Graph { get; }
    public long Opset => B.Opset;

    internal GradientContext(Node node, GraphBuilder b, string?[] outGrads, bool[] need)
    {
        Node = node; B = b; Graph = b.Graph; _outGrads = outGrads; _need = need;
        _inGrads = new string?[node.Inputs.Count];
    }

    /// <summary>A value of the graph as a <see cref="V"/> (element type as recorded, else Undefined).</summary>
    public V Val(string name) => new(B, name, Graph.TypeOf(name)?.ElemType ?? DataType.Undefined);

    public V I(int i) => Val(Node.Input(i));
    public V O(int i) => Val(Node.Output(i));
    public int InputCount => Node.Inputs.Count;
    public int OutputCount => Node.Outputs.Count;

    /// <summary>Gradient flowing into output i (typed like that output), or null when no gradient reaches it.</summary>
    public V? GO(int i) => i < _outGrads.Length && _outGrads[i] is { } g ? new(B, g, O(i).Type) : null;

    /// <summary>The gradient of output 0 (rules of single-output ops).</summary>
    public V G => GO(0) ?? throw new CompileException($"{Node.Describe()}: no gradient reaches output 0");

    /// <summary>Whether the gradient of input i is wanted.</summary>
    public bool Need(int i) => i < _need.Length && _need[i];

    public void SetGI(int i, string grad)
    {
        if (!Need(i)) return;
        _inGrads[i] = grad;
    }

    /// <summary>Sets input i's gradient, built only when it is wanted.</summary>
    public void SetGI(int i, Func<V> grad)
    {
        if (Need(i)) _inGrads[i] = grad();
    }

    /// <summary>Gradient of a broadcast input i: <paramref name="grad"/> (shaped like output 0) summed down to input i's shape.</summary>
    public void SetBroadcastGI(int i, Func<V> grad)
    {
        if (Need(i)) _inGrads[i] = Unbroadcast(grad(), I(i));
    }

    internal string? InputGradient(int i) => _inGrads[i];

    // ---------------------------------------------------------------- types and shapes

    public TensorType Type(string value) =>
        Graph.TypeOf(value) ?? throw new CompileException($"{Node.Describe()}: the type of '{value}' is unknown (shape inference could not determine it)");

    public DataType ElemType(string value) => Type(value).ElemType;

    /// <summary>The shape of a value; throws a clear error when its rank is unknown.</summary>
    public Dim[] ShapeOf(string value) =>
        Type(value).Shape ?? throw new CompileException($"{Node.Describe()}: the rank of '{value}' is unknown; its gradient needs it (give the model input shapes)");

    public int Rank(string value) => ShapeOf(value).Length;

    public long? StaticDim(string value, int axis) { var s = ShapeOf(value); return s[axis < 0 ? axis + s.Length : axis].Value; }

    public long GetInt(string attr, long dflt) => Node.GetInt(attr, dflt);
    public float GetFloat(string attr, float dflt) => Node.GetFloat(attr, dflt);

    /// <summary>Static value of input i when it is an initializer or a Constant node's output (axes, shapes, ratios).</summary>
    public Tensor? ConstantInput(int i) => ConstantValue(Graph, Node.Input(i));

    /// <summary>
    /// The static value of <paramref name="value"/> when it is an initializer or a Constant node's output,
    /// else null. <paramref name="producers"/> (from <see cref="Graph.Producers"/>) saves a scan of the nodes.
    /// </summary>
    public static Tensor? ConstantValue(Graph g, string value, Dictionary<string, Node>? producers = null)
    {
        if (value.Length == 0) return null;
        if (g.Initializers.TryGetValue(value, out var t)) return t;
        var n = producers != null ? producers.GetValueOrDefault(value) : g.Nodes.FirstOrDefault(n => n.Outputs.Contains(value));
        if (n is not { OpType: "Constant", Domain: "" }) return null;
        if (n.Attr("value")?.T is { } v) return v;
        if (n.Attr("value_float") is { } f) return Tensor.Float("", [f.F]);
        if (n.Attr("value_floats") is { } fs) return Tensor.Float("", fs.Floats, fs.Floats.Length);
        if (n.Attr("value_int") is { } i) return Tensor.Int64("", [i.I]);
        if (n.Attr("value_ints") is { } iz) return Tensor.Int64("", iz.Ints, iz.Ints.Length);
        return null;
    }

    /// <summary>
    /// Makes sure the forward node exposes output i (e.g. Dropout's mask, MaxPool's indices,
    /// LayerNormalization's statistics), adding it if the model left it out, and returns its name.
    /// </summary>
    public V EnsureOutput(int i, string hint, TensorType? type = null)
    {
        while (Node.Outputs.Count <= i) Node.Outputs.Add("");
        if (Node.Outputs[i].Length == 0)
        {
            var baseName = Node.Name.Length > 0 ? Node.Name : Node.Output(0);
            var saved = B.Prefix; B.Prefix = "";
            Node.Outputs[i] = B.Unique($"{baseName}/{hint}");
            B.Prefix = saved;
        }
        if (type != null) Graph.ValueTypes[Node.Outputs[i]] = type;
        return O(i);
    }

    /// <summary>A 0-D constant in the element type of <paramref name="like"/>.</summary>
    public string ScalarLike(double v, string like) => B.Scalar(v, ElemType(like));

    /// <summary>
    /// A Reshape target giving a tensor the shape of forward value <paramref name="value"/>: a constant
    /// when at most one dimension is not static (that one as -1, inferred by Reshape from the element
    /// count), else Shape(value) at run time. The constant form matters for memory: a backward Shape node
    /// of a forward activation keeps that activation alive until the backward reaches it, only for its shape.
    /// </summary>
    public string ReshapeTarget(string value)
    {
        var dims = ShapeOf(value);
        if (dims.Count(d => !d.IsKnown) <= 1 && dims.All(d => !d.IsKnown || d.Value > 0))
            return B.Ints(dims.Select(d => d.Value ?? -1).ToArray());
        return B.Shape(value);
    }

    /// <summary>The axes [from, to) as int64s.</summary>
    public static long[] Axes(int from, int to) => Enumerable.Range(from, Math.Max(0, to - from)).Select(a => (long)a).ToArray();

    /// <summary>Axis normalized to [0, rank).</summary>
    public static int NormAxis(long axis, int rank) => (int)(axis < 0 ? axis + rank : axis);

    /// <summary>
    /// Reduces <paramref name="grad"/> (shaped like the broadcast result) to the shape of
    /// <paramref name="target"/>: sums the leading axes the target lacks and the axes where the
    /// target has size 1. Decided statically when shapes allow, otherwise at run time.
    /// <paramref name="shapedLike"/> is a forward value shaped like <paramref name="grad"/> (default: output 0);
    /// gradients themselves carry no recorded type: a gradient is always shaped like its forward value.
    /// </summary>
    public V Unbroadcast(V grad, V target, V? shapedLike = null) => new(B, Unbroadcast(grad.Name, target.Name, shapedLike?.Name), grad.Type);

    /// <inheritdoc cref="Unbroadcast(V, V, V?)"/>
    public string Unbroadcast(string grad, string target, string? shapedLike = null)
    {
        var ts = ShapeOf(target);
        var gs = ShapeOf(shapedLike ?? O(0));
        int lead = gs.Length - ts.Length;
        if (lead < 0) throw new CompileException($"{Node.Describe()}: gradient of rank {gs.Length} cannot be reduced to '{target}' of rank {ts.Length}");
        var axes = new List<long>();
        for (int a = 0; a < lead; a++) axes.Add(a);
        bool dynamic = false;
        for (int a = 0; a < ts.Length; a++)
        {
            var td = ts[a]; var gd = gs[a + lead];
            if (td.Value == 1 && gd.Value != 1) { if (gd.IsKnown) axes.Add(a + lead); else dynamic = true; }
            else if (td.IsKnown && td.Value != 1) { }
            else if (!td.IsKnown && !(gd.SameAs(td) || (gd.IsKnown && gd.Value != 1))) dynamic = true;
        }
        if (!dynamic)
        {
            if (axes.Count == 0) return grad;
            var r = B.ReduceSum(grad, axes.ToArray(), keepDims: true);
            return lead > 0 ? B.Reshape(r, ReshapeTarget(target)) : r;
        }
        // Run-time: Shape(target) left-padded with 1s.
        var tShape = B.Shape(target);
        var padded = lead > 0 ? B.Concat(0, B.Ints(Enumerable.Repeat(1L, lead).ToArray()), tShape) : tShape;
        return B.Reshape(SumWhereSizeOne(grad, padded), tShape);
    }

    /// <summary>
    /// <paramref name="grad"/> summed (keeping dims) over the axes where the run-time int64 shape
    /// <paramref name="shape"/> (of the same rank) is 1 and Shape(grad) is not.
    /// </summary>
    public string SumWhereSizeOne(string grad, string shape)
    {
        var one = B.IntScalar(1);
        var mask = B.Op("And", [B.Op("Equal", [shape, one]), B.Op("Not", [B.Op("Equal", [B.Shape(grad), one])])]);
        return B.ReduceSumDynamic(grad, B.Reshape(B.Op("NonZero", [mask]), B.Ints(-1)), keepDims: true);
    }

    /// <summary>The inverse of a permutation.</summary>
    public static long[] InversePerm(long[] perm)
    {
        var inv = new long[perm.Length];
        for (int i = 0; i < perm.Length; i++) inv[perm[i]] = i;
        return inv;
    }
}
