using System.Runtime.InteropServices;
using OrtFinetune.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Plugins.Models;

/// <summary>The classifier layer found at the end of an imported model.</summary>
public sealed record HeadInfo(Node Node, string Weight, string? Bias, int ClassAxis, long Classes, long Features);

/// <summary>
/// Checks an imported forward model (one image input (N, C, H, W), logits (N, classes) as the first output)
/// and replaces its classifier head for a new number of classes.
/// </summary>
public static class OnnxImport
{
    /// <summary>Loads <paramref name="path"/>; ONNX format problems become <see cref="ModelException"/>s naming the file.</summary>
    public static Model Load(string path)
    {
        try { return ModelIO.Load(path); }
        catch (OnnxFormatException e) { throw new ModelException(e.Message.StartsWith(path) ? e.Message : $"{path}: {e.Message}", e); }
        catch (IOException e) { throw new ModelException($"{path}: cannot read the model: {e.Message}", e); }
    }

    /// <summary>The image input and logits output; throws naming the file and what is wrong.</summary>
    public static (ValueInfo Input, ValueInfo Logits) Validate(Model m, string path)
    {
        var g = m.Graph;
        if (g.Inputs.Count != 1)
            throw new ModelException($"{path}: expected one image input (N, C, H, W), found {g.Inputs.Count}: {string.Join(", ", g.Inputs.Select(i => $"'{i.Name}' {i.Type}"))}");
        var input = g.Inputs[0];
        if (input.Type.ElemType != DataType.Float || input.Type.Rank != 4)
            throw new ModelException($"{path}: input '{input.Name}' is {input.Type}; expected float (N, C, H, W)");
        if (!input.Type.Shape![1].IsKnown)
            throw new ModelException($"{path}: input '{input.Name}' {input.Type} has no fixed channel count");
        if (g.Outputs.Count == 0) throw new ModelException($"{path}: the model has no outputs");
        var logits = g.Outputs[0];
        if (!logits.Type.ElemType.IsFloat() || (logits.Type.HasRank && logits.Type.Rank != 2))
            throw new ModelException($"{path}: first output '{logits.Name}' is {logits.Type}; expected float logits (N, classes)");
        return (input, logits);
    }

    /// <summary>
    /// The last Gemm or MatMul(+Add) that produces the logits output, with its weight initializer
    /// (and bias), looking through Identity/Reshape/Flatten nodes after it. Null when there is none.
    /// </summary>
    public static HeadInfo? FindHead(Model m, string logits)
    {
        var g = m.Graph;
        var producers = g.Producers();
        string value = logits;
        for (int hops = 0; hops < 8 && producers.TryGetValue(value, out var n); hops++)
        {
            if (n.Domain != "") return null;
            switch (n.OpType)
            {
                case "Identity" or "Flatten" or "Reshape" or "Squeeze":
                    value = n.Input(0);
                    continue;
                case "Gemm":
                {
                    if (!g.Initializers.TryGetValue(n.Input(1), out var w) || w.Dims.Length != 2) return null;
                    int axis = n.GetInt("transB", 0) != 0 ? 0 : 1;
                    string? bias = n.HasInput(2) && g.Initializers.ContainsKey(n.Input(2)) ? n.Input(2) : null;
                    return new HeadInfo(n, n.Input(1), bias, axis, w.Dims[axis], w.Dims[1 - axis]);
                }
                case "MatMul":
                {
                    if (!g.Initializers.TryGetValue(n.Input(1), out var w) || w.Dims.Length != 2) return null;
                    return new HeadInfo(n, n.Input(1), null, 1, w.Dims[1], w.Dims[0]);
                }
                case "Add":
                {
                    // MatMul(x, W) + b, either operand order.
                    for (int k = 0; k < 2; k++)
                    {
                        var other = n.Input(1 - k);
                        if (producers.TryGetValue(n.Input(k), out var mm) && mm.OpType == "MatMul" && mm.Domain == ""
                            && g.Initializers.TryGetValue(mm.Input(1), out var w) && w.Dims.Length == 2
                            && g.Initializers.TryGetValue(other, out var bt) && bt.Dims.Length >= 1 && bt.Dims[^1] == w.Dims[1] && bt.ElementCount == w.Dims[1])
                            return new HeadInfo(mm, mm.Input(1), other, 1, w.Dims[1], w.Dims[0]);
                    }
                    return null;
                }
                default:
                    return null;
            }
        }
        return null;
    }

    /// <summary>
    /// Replaces the head's weight (and bias) initializers, under the same names, with freshly initialized
    /// ones for <paramref name="numClasses"/> classes (nn.Linear's default init: U(±1/sqrt(features))), and
    /// updates the logits output's shape. Returns a note describing what changed.
    /// </summary>
    public static string ReplaceHead(Model m, string path, int numClasses, int seed)
    {
        var (_, logits) = Validate(m, path);
        var g = m.Graph;
        var head = FindHead(m, logits.Name)
            ?? throw new ModelException($"{path}: cannot find the classifier head: output '{logits.Name}' is not produced by a Gemm or MatMul(+Add) with an initializer weight");
        var w = g.Initializers[head.Weight];
        if (w.Type != DataType.Float)
            throw new ModelException($"{path}: head weight '{head.Weight}' is {w.Type.OnnxName()}; only float32 heads can be replaced");
        long oldClasses = head.Classes;
        if (logits.Type.Shape is { Length: 2 } s && s[1].IsKnown && s[1].Value != oldClasses)
            throw new ModelException($"{path}: head weight '{head.Weight}' [{string.Join(", ", w.Dims)}] has {oldClasses} classes but output '{logits.Name}' is {logits.Type}");
        foreach (var name in new[] { head.Weight, head.Bias }.OfType<string>())
        {
            int readers = g.Nodes.Count(n => n.Inputs.Contains(name));
            if (readers != 1) throw new ModelException($"{path}: head initializer '{name}' is read by {readers} nodes; cannot replace it safely");
        }
        if (oldClasses == numClasses)
            return $"head '{head.Weight}' already has {numClasses} classes; kept its weights";

        var init = new WeightInit(seed);
        long f = head.Features;
        long[] wDims = head.ClassAxis == 0 ? [numClasses, f] : [f, numClasses];
        g.Initializers[head.Weight] = MakeFloat(head.Weight, wDims, s => init.LinearDefault(s, f));
        if (head.Bias != null)
        {
            var bt = g.Initializers[head.Bias];
            if (bt.Type != DataType.Float) throw new ModelException($"{path}: head bias '{head.Bias}' is {bt.Type.OnnxName()}; only float32 heads can be replaced");
            long[] bDims = [.. bt.Dims.SkipLast(1), numClasses];
            g.Initializers[head.Bias] = MakeFloat(head.Bias, bDims, s => init.LinearDefault(s, f));
        }

        // Output and intermediate types that mention the old class count.
        var batch = logits.Type.Shape is { Length: 2 } ls ? ls[0] : Dim.Unknown;
        g.Outputs[0] = new ValueInfo(logits.Name, new TensorType(logits.Type.ElemType, [batch, new Dim(numClasses)]));
        var producers = g.Producers();
        var stale = new Queue<string>(head.Node.Outputs);
        var seen = new HashSet<string>();
        while (stale.Count > 0)
        {
            var v = stale.Dequeue();
            if (!seen.Add(v)) continue;
            g.ValueTypes.Remove(v);
            foreach (var n in g.Nodes.Where(n => n.Inputs.Contains(v))) foreach (var o in n.Outputs) stale.Enqueue(o);
        }
        return $"head '{head.Weight}' replaced: {oldClasses} -> {numClasses} classes ({f} features, fresh init)";
    }

    delegate void Fill(Span<float> s);

    static Tensor MakeFloat(string name, long[] dims, Fill fill)
    {
        var bytes = new byte[checked(dims.Aggregate(1L, (a, d) => a * d) * 4)];
        fill(MemoryMarshal.Cast<byte, float>(bytes.AsSpan()));
        return new Tensor(name, DataType.Float, dims, bytes);
    }
}
