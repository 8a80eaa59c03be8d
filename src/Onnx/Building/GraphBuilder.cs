namespace OrtFinetune.Onnx;

/// <summary>
/// Appends nodes to a graph with unique names. Every helper returns the name of the value it
/// creates, so blocks compose: <c>b.Mul(b.Sub(x, y), s)</c>. Opset-dependent forms (axes as
/// attribute or input) are chosen from <see cref="Opset"/>.
/// </summary>
public sealed class GraphBuilder
{
    /// <summary>The graph nodes are appended to.</summary>
    public Graph Graph { get; }
    /// <summary>ai.onnx opset the emitted nodes must conform to.</summary>
    public long Opset { get; }
    /// <summary>Prefix for names of emitted nodes and values (e.g. "encoder/mlp/MatMul_grad").</summary>
    public string Prefix { get; set; } = "";
    readonly HashSet<string> _used;
    readonly Dictionary<string, int> _counters = new();
    readonly Dictionary<(DataType, string), string> _constCache = new();

    /// <summary>A builder appending to <paramref name="graph"/>; names already used there are avoided.</summary>
    public GraphBuilder(Graph graph, long opset)
    {
        Graph = graph; Opset = opset;
        _used = graph.AllNames();
        foreach (var n in graph.Nodes) if (n.Name.Length > 0) _used.Add(n.Name);
    }

    /// <summary>A fresh name starting with <paramref name="hint"/>, unique in the graph.</summary>
    public string Unique(string hint)
    {
        var baseName = Prefix.Length > 0 ? $"{Prefix}/{hint}" : hint;
        if (_used.Add(baseName)) return baseName;
        _counters.TryGetValue(baseName, out int k);
        string name;
        do name = $"{baseName}_{++k}"; while (!_used.Add(name));
        _counters[baseName] = k;
        return name;
    }

    /// <summary>Reserves an exact name (e.g. an interface name such as "loss"); throws if taken.</summary>
    public string Reserve(string exact)
    {
        if (!_used.Add(exact)) throw new OnnxFormatException($"name '{exact}' is already used in the graph");
        return exact;
    }

    /// <summary>Appends a node with the given inputs and outputs (a unique node name) and returns it.</summary>
    public Node AddNode(string opType, IEnumerable<string> inputs, IEnumerable<string> outputs, string domain = "", params NodeAttribute[] attrs)
    {
        var n = new Node(opType, inputs, outputs, Unique(opType), domain);
        foreach (var a in attrs) n.Set(a);
        Graph.Nodes.Add(n);
        return n;
    }

    /// <summary>Emits one node with a single fresh output and returns that output's name.</summary>
    public string Op(string opType, IEnumerable<string> inputs, params NodeAttribute[] attrs) =>
        OpDomain(opType, "", inputs, attrs);

    /// <summary>Like <see cref="Op"/>, for an operator of another domain (e.g. "com.microsoft").</summary>
    public string OpDomain(string opType, string domain, IEnumerable<string> inputs, params NodeAttribute[] attrs)
    {
        var o = Unique(opType.ToLowerInvariant());
        AddNode(opType, inputs, [o], domain, attrs);
        return o;
    }

    /// <summary>Emits one node with <paramref name="outputs"/> fresh outputs and returns their names.</summary>
    public string[] OpN(string opType, IEnumerable<string> inputs, int outputs, params NodeAttribute[] attrs)
    {
        var outs = Enumerable.Range(0, outputs).Select(i => Unique(opType.ToLowerInvariant())).ToArray();
        AddNode(opType, inputs, outs, "", attrs);
        return outs;
    }

    // ------------------------------------------------------------ constants

    /// <summary>Adds a constant tensor as an initializer and returns its (fresh) name.</summary>
    public string Const(Tensor t, string hint = "const")
    {
        var name = Unique(hint);
        Graph.Initializers[name] = t.WithName(name);
        return name;
    }

    string Cached(DataType t, string key, Func<Tensor> make)
    {
        if (_constCache.TryGetValue((t, key), out var n) && Graph.Initializers.ContainsKey(n)) return n;
        n = Const(make(), "c");
        _constCache[(t, key)] = n;
        return n;
    }

    /// <summary>A 1-D int64 constant.</summary>
    public string Ints(params long[] v) => Cached(DataType.Int64, "i[" + string.Join(",", v) + "]", () => Tensor.Int64("", v, v.Length));
    /// <summary>A 0-D int64 constant.</summary>
    public string IntScalar(long v) => Cached(DataType.Int64, "is" + v, () => Tensor.Int64("", [v]));
    /// <summary>A 0-D constant of the given element type.</summary>
    public string Scalar(double v, DataType t) => Cached(t, "s" + v.ToString("R"), () => Tensor.OfType("", t, [v]));

    // ------------------------------------------------------------ common ops

    /// <summary>a + b (broadcasting).</summary>
    public string Add(string a, string b) => Op("Add", [a, b]);
    /// <summary>a - b (broadcasting).</summary>
    public string Sub(string a, string b) => Op("Sub", [a, b]);
    /// <summary>a * b (broadcasting).</summary>
    public string Mul(string a, string b) => Op("Mul", [a, b]);
    /// <summary>a / b (broadcasting).</summary>
    public string Div(string a, string b) => Op("Div", [a, b]);
    /// <summary>-a.</summary>
    public string Neg(string a) => Op("Neg", [a]);
    /// <summary>a converted to <paramref name="to"/>.</summary>
    public string Cast(string a, DataType to) => Op("Cast", [a], NodeAttribute.Of("to", (long)to));
    /// <summary>The shape of a, as an int64 tensor.</summary>
    public string Shape(string a) => Op("Shape", [a]);
    /// <summary>a reshaped to the int64 tensor <paramref name="shape"/>.</summary>
    public string Reshape(string a, string shape) => Op("Reshape", [a, shape]);
    /// <summary>a with its axes permuted.</summary>
    public string Transpose(string a, params long[] perm) => Op("Transpose", [a], NodeAttribute.Of("perm", perm));
    /// <summary>a broadcast to the int64 tensor <paramref name="shape"/>.</summary>
    public string Expand(string a, string shape) => Op("Expand", [a, shape]);
    /// <summary>x where c is true, else y.</summary>
    public string Where(string c, string x, string y) => Op("Where", [c, x, y]);
    /// <summary>The matrix product of a and b (numpy semantics).</summary>
    public string MatMul(string a, string b) => Op("MatMul", [a, b]);
    /// <summary>xs joined along <paramref name="axis"/>.</summary>
    public string Concat(long axis, params string[] xs) => Op("Concat", xs, NodeAttribute.Of("axis", axis));

    /// <summary>The sum of xs (the value itself for one).</summary>
    public string Sum(IReadOnlyList<string> xs) => xs.Count == 1 ? xs[0] : xs.Count == 2 ? Add(xs[0], xs[1]) : Op("Sum", xs);

    /// <summary>Shape(x)[start:end] (end exclusive; may be long.MaxValue).</summary>
    public string ShapeSlice(string x, long start, long end) =>
        Opset >= 15 ? Op("Shape", [x], NodeAttribute.Of("start", start), NodeAttribute.Of("end", end))
                    : Slice(Shape(x), [start], [end], [0]);

    /// <summary>x[starts:ends:steps] along <paramref name="axes"/>.</summary>
    public string Slice(string x, long[] starts, long[] ends, long[] axes, long[]? steps = null)
    {
        var ins = new List<string> { x, Ints(starts), Ints(ends), Ints(axes) };
        if (steps != null) ins.Add(Ints(steps));
        return Op("Slice", ins);
    }

    /// <summary>x with size-1 axes inserted (axes as attribute or input, by opset).</summary>
    public string Unsqueeze(string x, params long[] axes) => Opset >= 13
        ? Op("Unsqueeze", [x, Ints(axes)]) : Op("Unsqueeze", [x], NodeAttribute.Of("axes", axes));

    /// <summary>x without the given size-1 axes (all of them when none are given).</summary>
    public string Squeeze(string x, params long[] axes) => Opset >= 13
        ? Op("Squeeze", axes.Length == 0 ? [x] : [x, Ints(axes)]) : Op("Squeeze", [x], NodeAttribute.Of("axes", axes));

    /// <summary>ReduceSum over static axes (opset 13+: axes as an input).</summary>
    public string ReduceSum(string x, long[] axes, bool keepDims) => Opset >= 13
        ? Op("ReduceSum", [x, Ints(axes)], NodeAttribute.Of("keepdims", keepDims ? 1L : 0L))
        : Op("ReduceSum", [x], NodeAttribute.Of("axes", axes), NodeAttribute.Of("keepdims", keepDims ? 1L : 0L));

    /// <summary>ReduceSum over axes given as a runtime int64 tensor (empty = no-op).</summary>
    public string ReduceSumDynamic(string x, string axes, bool keepDims) =>
        Op("ReduceSum", [x, axes], NodeAttribute.Of("keepdims", keepDims ? 1L : 0L), NodeAttribute.Of("noop_with_empty_axes", 1L));

    /// <summary>Mean over static axes (opset 18+: axes as an input).</summary>
    public string ReduceMean(string x, long[] axes, bool keepDims) => Opset >= 18
        ? Op("ReduceMean", [x, Ints(axes)], NodeAttribute.Of("keepdims", keepDims ? 1L : 0L))
        : Op("ReduceMean", [x], NodeAttribute.Of("axes", axes), NodeAttribute.Of("keepdims", keepDims ? 1L : 0L));

    /// <summary>A tensor of the given runtime shape filled with <paramref name="value"/>.</summary>
    public string Fill(string shape, DataType t, double value) =>
        Op("ConstantOfShape", [shape], NodeAttribute.Of("value", Tensor.OfType("value", t, [value], 1)));

    /// <summary>Zeros shaped and typed like <paramref name="like"/>.</summary>
    public string ZerosLike(string like, DataType t) => Fill(Shape(like), t, 0);

    /// <summary>Records the type of a value created by the builder (optional; helps later passes).</summary>
    public void SetType(string value, TensorType t) => Graph.ValueTypes[value] = t;
}
