using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// One node as a provider would see it: op, opset, the element type (and shape, for realistic probing)
/// of every input, the element type of every output, and the node's attributes.
/// Inputs that are int64 initializers (axes, shapes) carry their value, as some kernels want constants.
/// </summary>
public sealed record KernelQuery(string OpType, string Domain, long Opset, IReadOnlyList<(DataType Type, Dim[]? Shape, Tensor? Constant)?> Inputs,
    IReadOnlyList<DataType?> Outputs, Node Attributes)
{
    /// <summary>The types that decide kernel selection: op, opset and the dtypes of inputs and outputs.</summary>
    public string Key => $"{(Domain.Length > 0 ? Domain + "." : "")}{OpType}@{Opset}({string.Join(",", Inputs.Select(i => i?.Type.OnnxName() ?? "-"))})->({string.Join(",", Outputs.Select(o => o?.OnnxName() ?? "-"))})"
        + (Attributes.Attr("reduction") is { } r ? $"[reduction={r.S}]" : "");

    /// <summary>
    /// The float type other than fp32 among the inputs and outputs (float16, bfloat16 or double), if any:
    /// what a probe is about. fp32 kernels are assumed to exist.
    /// </summary>
    public DataType? ProbedType => Inputs.Select(i => i?.Type).Concat(Outputs).FirstOrDefault(t => t is DataType.Float16 or DataType.BFloat16 or DataType.Double);

    /// <summary>The query for a node of a graph whose value types are known.</summary>
    public static KernelQuery Of(Node n, Graph g, long opset, Func<string, DataType?>? typeOverride = null)
    {
        var ins = n.Inputs.Select(i =>
        {
            if (i.Length == 0) return ((DataType, Dim[]?, Tensor?)?)null;
            var t = g.TypeOf(i);
            var dt = typeOverride?.Invoke(i) ?? t?.ElemType ?? DataType.Undefined;
            Tensor? c = g.Initializers.TryGetValue(i, out var init) && !init.Type.IsFloat() && init.ElementCount <= 64 ? init : null;
            return (dt, t?.Shape, c);
        }).ToList();
        var outs = n.Outputs.Select(o => o.Length == 0 ? null : typeOverride?.Invoke(o) ?? g.TypeOf(o)?.ElemType).ToList();
        return new KernelQuery(n.OpType, n.Domain, opset, ins, outs, n);
    }
}

/// <summary>Which (op, dtype) kernels the execution provider in use really has.</summary>
public interface IKernelAvailability
{
    /// <summary>A name for reports (e.g. "CPUExecutionProvider").</summary>
    string Provider { get; }
    bool Has(KernelQuery query);
}

/// <summary>Assumes every kernel exists (for graph tests and for providers that are not probed).</summary>
public sealed class AllKernels : IKernelAvailability
{
    public static readonly AllKernels Instance = new();
    public string Provider => "any";
    public bool Has(KernelQuery query) => true;
}

/// <summary>A fixed answer: kernels for 16-bit types exist only for the listed (op, dtype) pairs. For tests.</summary>
public sealed class ListedKernels(IEnumerable<(string Op, DataType Type)> half) : IKernelAvailability
{
    readonly HashSet<(string, DataType)> _half = half.ToHashSet();
    public string Provider => "listed";
    public bool Has(KernelQuery q) => q.ProbedType is not { } t || t == DataType.Double || _half.Contains((q.OpType, t));
}
