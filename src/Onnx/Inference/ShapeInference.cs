using System.Diagnostics.CodeAnalysis;

namespace OrtFinetune.Onnx;

/// <summary>Settings of <see cref="ShapeInference"/>.</summary>
public sealed record InferenceOptions
{
    /// <summary>Use value_info types already in the graph where our own inference knows less.</summary>
    public bool UseExistingTypes { get; init; } = true;
    /// <summary>Largest int64/bool tensor (rank &lt;= 1) whose values are propagated.</summary>
    public int MaxValueElements { get; init; } = 64;
    /// <summary>The inference functions to use; null: the built-in ones.</summary>
    public ShapeInferenceRules? Rules { get; init; }
}

/// <summary>What inference found besides the types it wrote into the graph.</summary>
public sealed class InferenceResult
{
    /// <summary>Propagated values of small integer/bool tensors (rank &lt;= 1), by value name.</summary>
    public Dictionary<string, Dim[]> Values { get; } = new();
    /// <summary>Nodes whose op has no inference function (their outputs got Undefined / unknown shape).</summary>
    public List<Node> UnknownOps { get; } = new();
}

/// <summary>Infers the type of one node's outputs; see <see cref="InferContext"/>.</summary>
public delegate void InferFn(InferContext c);

/// <summary>
/// The inference functions by (domain, op type). Pass an instance in <see cref="InferenceOptions.Rules"/>;
/// <see cref="CreateDefault"/> gives the built-in functions to extend.
/// </summary>
public sealed class ShapeInferenceRules
{
    readonly Dictionary<(string Domain, string Op), InferFn> _table = new();

    /// <summary>The built-in functions, built once, for callers that pass no rules; never changed.</summary>
    internal static ShapeInferenceRules Default { get; } = CreateDefault();

    /// <summary>A new table with every built-in inference function (add or replace functions in it freely).</summary>
    public static ShapeInferenceRules CreateDefault()
    {
        var r = new ShapeInferenceRules();
        ElementwiseInference.Register(r);
        ReductionInference.Register(r);
        ShapeOpsInference.Register(r);
        NnInference.Register(r);
        MiscInference.Register(r);
        return r;
    }

    /// <summary>Registers (or replaces) the inference function of an op.</summary>
    public void Register(string opType, InferFn fn, string domain = "") => _table[(Node.NormalizeDomain(domain), opType)] = fn;
    internal void Reg(InferFn fn, params string[] ops) { foreach (var o in ops) Register(o, fn); }
    internal void RegMs(InferFn fn, params string[] ops) { foreach (var o in ops) Register(o, fn, "com.microsoft"); }

    /// <summary>Whether an op has an inference function here.</summary>
    public bool IsSupported(string opType, string domain = "") => _table.ContainsKey((Node.NormalizeDomain(domain), opType));

    internal InferFn? Find(string domain, string opType) => _table.GetValueOrDefault((domain, opType));
}

/// <summary>
/// Element type and shape inference with symbolic dims and value propagation for shape computations
/// (Shape -> Gather -> Concat -> Reshape chains). Fills <c>Graph.ValueTypes</c> for every node output.
/// </summary>
public static class ShapeInference
{
    /// <summary>Infers types into <c>model.Graph.ValueTypes</c> (see <see cref="Run"/>).</summary>
    public static void Infer(Model model, InferenceOptions? o = null) => Run(model, o);

    /// <summary>Infers types (into <c>model.Graph.ValueTypes</c>) and returns the propagated values.</summary>
    public static InferenceResult Run(Model model, InferenceOptions? o = null)
    {
        o ??= new InferenceOptions();
        var rules = o.Rules ?? ShapeInferenceRules.Default;
        var g = model.Graph;
        g.SortTopologically();
        var st = new InferState(model, o);
        foreach (var n in g.Nodes)
        {
            var c = new InferContext(st, n);
            if (rules.Find(n.Domain, n.OpType) is { } fn)
            {
                try { fn(c); }
                catch (OnnxFormatException) { throw; }
                catch (Exception e) when (e is IndexOutOfRangeException or ArgumentException or InvalidOperationException or OverflowException)
                {
                    throw new OnnxFormatException($"{n.Describe()}: shape inference failed ({e.Message}); inputs {c.DescribeInputs()}", e);
                }
            }
            else st.Result.UnknownOps.Add(n);
            c.Finish();
        }
        return st.Result;
    }
}

internal sealed class InferState
{
    public readonly Model Model;
    public readonly Graph Graph;
    public readonly InferenceOptions Options;
    public readonly Dictionary<string, TensorType> FileTypes;
    public readonly InferenceResult Result = new();
    public readonly Dictionary<string, TensorType> InputTypes = new();

    public InferState(Model m, InferenceOptions o)
    {
        Model = m; Graph = m.Graph; Options = o;
        FileTypes = o.UseExistingTypes ? new Dictionary<string, TensorType>(m.Graph.ValueTypes) : new();
        if (o.UseExistingTypes)
            foreach (var v in m.Graph.Outputs) FileTypes.TryAdd(v.Name, v.Type);
        foreach (var i in m.Graph.Inputs) InputTypes[i.Name] = i.Type;
        foreach (var (name, t) in m.Graph.Initializers)
        {
            InputTypes[name] = t.TensorType;
            var v = InferContext.ValuesOf(t, o.MaxValueElements);
            if (v != null) Result.Values[name] = v;
        }
    }
}

/// <summary>The view of one node during inference: input types and values, output setters.</summary>
public sealed class InferContext
{
    readonly InferState _s;
    /// <summary>The node whose outputs are inferred.</summary>
    public Node Node { get; }
    readonly TensorType?[] _out;
    readonly Dim[]?[] _outValues;

    internal InferContext(InferState s, Node n)
    {
        _s = s; Node = n;
        _out = new TensorType?[n.Outputs.Count];
        _outValues = new Dim[]?[n.Outputs.Count];
    }

    /// <summary>The graph being inferred.</summary>
    public Graph Graph => _s.Graph;
    /// <summary>Opset of the node's domain.</summary>
    public long Opset => _s.Model.OpsetOf(Node.Domain);
    /// <summary>Number of inputs (absent optional ones included).</summary>
    public int InputCount => Node.Inputs.Count;
    /// <summary>Number of outputs.</summary>
    public int OutputCount => Node.Outputs.Count;
    /// <summary>Whether input i is present.</summary>
    public bool Has(int i) => Node.HasInput(i);
    /// <summary>Whether output i is present.</summary>
    public bool HasOutput(int i) => Node.Output(i).Length > 0;

    /// <summary>Type of input i, or null when absent or unknown.</summary>
    public TensorType? Type(int i)
    {
        var name = Node.Input(i);
        if (name.Length == 0) return null;
        if (_s.InputTypes.TryGetValue(name, out var t)) return t;
        if (_s.Graph.ValueTypes.TryGetValue(name, out t)) return t;
        return null;
    }

    /// <summary>Element type of input i, or Undefined.</summary>
    public DataType Elem(int i) => Type(i)?.ElemType ?? DataType.Undefined;
    /// <summary>Shape of input i, or null when unknown.</summary>
    public Dim[]? Shape(int i) => Type(i)?.Shape;
    /// <summary>Rank of input i, or -1 when unknown.</summary>
    public int Rank(int i) => Type(i)?.Rank ?? -1;

    /// <summary>Propagated values of input i (small int/bool tensors), or null.</summary>
    public Dim[]? Value(int i)
    {
        var name = Node.Input(i);
        return name.Length > 0 && _s.Result.Values.TryGetValue(name, out var v) ? v : null;
    }

    /// <summary>Input i's values when all are known numbers.</summary>
    public long[]? Ints(int i)
    {
        var v = Value(i);
        if (v == null || v.Any(d => !d.IsKnown)) return null;
        return v.Select(d => d.Value!.Value).ToArray();
    }

    /// <summary>Constant input values as doubles (initializer of any numeric type), or null.</summary>
    public double[]? ConstDoubles(int i)
    {
        var name = Node.Input(i);
        if (name.Length > 0 && _s.Graph.Initializers.TryGetValue(name, out var t) && t.ElementCount <= _s.Options.MaxValueElements)
            try { return t.ToDoubles(); } catch (NotSupportedException) { return null; }
        var ints = Ints(i);
        return ints?.Select(x => (double)x).ToArray();
    }

    /// <summary>An int attribute of the node, or <paramref name="dflt"/>.</summary>
    public long Int(string name, long dflt) => Node.GetInt(name, dflt);
    /// <summary>An ints attribute of the node, or null.</summary>
    public long[]? IntsAttr(string name) => Node.GetInts(name);

    /// <summary>Sets output i's type and, for small int tensors, its propagated values.</summary>
    public void Set(int i, TensorType t, Dim[]? values = null)
    {
        if (i >= _out.Length) return;
        _out[i] = t;
        _outValues[i] = values;
    }
    /// <summary>Sets output i's element type, shape and propagated values.</summary>
    public void Set(int i, DataType t, Dim[]? shape, Dim[]? values = null) => Set(i, new TensorType(t, shape), values);
    /// <summary>Output i typed and shaped like input j.</summary>
    public void SameAs(int i, int j) => Set(i, Type(j) ?? new TensorType(DataType.Undefined, null), i == 0 ? Value(j) : null);

    /// <summary>Throws an <see cref="OnnxFormatException"/> naming the node and its input types.</summary>
    [DoesNotReturn]
    public void Fail(string msg) => throw new OnnxFormatException($"{Node.Describe()}: {msg}; inputs {DescribeInputs()}");

    /// <summary><see cref="Fail"/> usable in expressions.</summary>
    public T FailWith<T>(string msg) { Fail(msg); return default!; }

    /// <summary>The inputs with their types, for messages.</summary>
    public string DescribeInputs() =>
        "(" + string.Join(", ", Node.Inputs.Select((n, i) => n.Length == 0 ? "-" : $"{n}: {Type(i)?.ToString() ?? "?"}")) + ")";

    /// <summary>Normalizes an axis for the given rank, failing when out of range.</summary>
    public int Axis(long axis, int rank)
    {
        if (axis < -rank || axis >= rank) Fail($"axis {axis} is out of range for rank {rank}");
        return (int)(axis < 0 ? axis + rank : axis);
    }

    internal void Finish()
    {
        for (int i = 0; i < Node.Outputs.Count; i++)
        {
            var name = Node.Outputs[i];
            if (name.Length == 0) continue;
            var t = _out[i];
            if (_s.FileTypes.TryGetValue(name, out var ft)) t = Merge(t, ft);
            t ??= new TensorType(DataType.Undefined, null);
            _s.Graph.ValueTypes[name] = t;
            var v = _outValues[i];
            if (v != null && t.Rank <= 1 && v.Length <= _s.Options.MaxValueElements && (t.Rank != 0 || v.Length == 1)
                && (t.Shape == null || t.Rank == 0 || !t.Shape[0].IsKnown || t.Shape[0].Value == v.Length))
                _s.Result.Values[name] = v;
        }
    }

    /// <summary>Ours wins where it knows; the file's type fills rank, element type and unknown dims.</summary>
    static TensorType Merge(TensorType? ours, TensorType file)
    {
        if (ours == null) return file;
        var et = ours.ElemType != DataType.Undefined ? ours.ElemType : file.ElemType;
        if (ours.Shape == null) return new TensorType(et, file.Shape);
        if (file.Shape == null || file.Shape.Length != ours.Shape.Length) return ours with { ElemType = et };
        var s = new Dim[ours.Shape.Length];
        for (int k = 0; k < s.Length; k++)
            s[k] = ours.Shape[k].IsKnown || (ours.Shape[k].Symbol != null && !file.Shape[k].IsKnown) ? ours.Shape[k]
                : file.Shape[k].IsKnown || file.Shape[k].Symbol != null ? file.Shape[k] : ours.Shape[k];
        return new TensorType(et, s);
    }

    internal static Dim[]? ValuesOf(Tensor t, int max)
    {
        if (t.Dims.Length > 1 || t.ElementCount > max) return null;
        if (t.Type is not (DataType.Int64 or DataType.Int32 or DataType.Bool or DataType.Int8 or DataType.UInt8 or DataType.Int16)) return null;
        return t.ToInt64s().Select(x => new Dim(x)).ToArray();
    }

    internal int MaxValues => _s.Options.MaxValueElements;
}
