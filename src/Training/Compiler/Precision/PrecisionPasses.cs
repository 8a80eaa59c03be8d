using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// The compiler's implementation of the rewrites a precision policy asks for, consulting the provider's kernels.
/// With <paramref name="lowPrecisionActivations"/>, autocast puts its low-precision ops in 16-bit even where the provider
/// has no 16-bit kernel (CPU): KernelFallback later computes those nodes in fp32 between casts, so their inputs and
/// outputs, the activations the backward keeps, are 16-bit as under autocast on a GPU (CompileOptions.LowPrecisionActivations).
/// </summary>
public sealed class PrecisionPasses(IKernelAvailability? kernels = null, bool lowPrecisionActivations = false) : IPrecisionPasses
{
    public IKernelAvailability Kernels { get; } = kernels ?? AllKernels.Instance;

    public void Autocast(Model forward, DataType low, AutocastLists lists) =>
        AutocastPass.Run(forward, low, lists, lowPrecisionActivations ? AllKernels.Instance : Kernels);
    public void ConvertTo(Model forward, DataType storage) => ConvertPass.Run(forward, storage);
}

/// <summary>What ran in which dtype: per op type, the number of nodes computing in each float dtype.</summary>
public sealed class DtypeReport
{
    public Dictionary<string, Dictionary<DataType, int>> ByOp { get; } = new();

    /// <summary>
    /// The compute dtype of a node is the dtype of its first float input (or output, for ops without
    /// float inputs); nodes without float values are not counted. Casts are listed by their target dtype.
    /// </summary>
    public static DtypeReport Of(Model model)
    {
        var g = model.Graph;
        ShapeInference.Infer(model);
        var r = new DtypeReport();
        foreach (var n in g.Nodes)
        {
            DataType? t = n.OpType == "Cast" ? (DataType)n.GetInt("to", 0)
                : n.Inputs.Concat(n.Outputs).Where(v => v.Length > 0).Select(v => g.TypeOf(v)?.ElemType).FirstOrDefault(x => x is { } e && e.IsFloat());
            if (t is not { } dt || !dt.IsFloat()) continue;
            var key = (n.Domain.Length > 0 ? n.Domain + "." : "") + n.OpType;
            if (!r.ByOp.TryGetValue(key, out var d)) r.ByOp[key] = d = new();
            d[dt] = d.GetValueOrDefault(dt) + 1;
        }
        return r;
    }

    public int Count(string op, DataType t) => ByOp.TryGetValue(op, out var d) ? d.GetValueOrDefault(t) : 0;
    public int Total(DataType t) => ByOp.Values.Sum(d => d.GetValueOrDefault(t));

    public override string ToString()
    {
        var types = ByOp.Values.SelectMany(d => d.Keys).Distinct().OrderBy(t => t).ToList();
        var sb = new System.Text.StringBuilder();
        sb.Append($"{"op",-28}").AppendJoin("", types.Select(t => $"{t.OnnxName(),10}")).AppendLine();
        foreach (var (op, d) in ByOp.OrderBy(kv => kv.Key))
            sb.Append($"{op,-28}").AppendJoin("", types.Select(t => $"{(d.TryGetValue(t, out var c) ? c.ToString() : "-"),10}")).AppendLine();
        sb.Append($"{"total",-28}").AppendJoin("", types.Select(t => $"{Total(t),10}")).AppendLine();
        return sb.ToString();
    }
}
