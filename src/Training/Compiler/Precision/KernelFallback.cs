using OrtFinetune.Onnx;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// Makes a finished graph (training, eval, optimizer or inference) loadable on a provider without
/// silent fallbacks: every node that computes in a 16-bit type the provider has no kernel for is
/// wrapped in casts (16-bit inputs cast to fp32, outputs cast back), so it runs in fp32 on the same
/// device. Each wrapped node's outputs are still rounded to 16-bit (faithful to 16-bit compute, and
/// activations kept for backward stay 16-bit).
/// </summary>
public static class KernelFallback
{
    public sealed record Result(int Wrapped, IReadOnlyDictionary<string, int> WrappedByOp);

    public static Result Apply(Model model, IKernelAvailability kernels)
    {
        var g = model.Graph;
        ShapeInference.Infer(model);
        long opset = model.OpsetOf("");
        var b = new GraphBuilder(g, opset);
        var byOp = new Dictionary<string, int>();
        var nodes = new List<Node>(g.Nodes.Count);
        foreach (var n in g.Nodes)
        {
            nodes.Add(n);
            if (n.Domain != "" || n.OpType is "Cast" || n.Attributes.Values.Any(a => a.G != null)) continue;
            var q = KernelQuery.Of(n, g, opset);
            if (q.ProbedType is not { } half || kernels.Has(q)) continue;
            // Would it load with fp32 in place of the 16-bit type?
            var q32 = KernelQuery.Of(n, g, opset, v => g.TypeOf(v)?.ElemType == half ? DataType.Float : null);
            if (!kernels.Has(q32)) throw new CompileException($"{n.Describe()} has no {half.OnnxName()} kernel on {kernels.Provider}, and no float kernel either");
            nodes.RemoveAt(nodes.Count - 1);
            for (int i = 0; i < n.Inputs.Count; i++)
            {
                var v = n.Inputs[i];
                if (v.Length == 0 || g.TypeOf(v)?.ElemType != half) continue;
                var c = b.Unique($"{v}/fallback_fp32");
                nodes.Add(new Node("Cast", [v], [c], b.Unique("fallback/Cast")).Set(NodeAttribute.Of("to", (long)DataType.Float)));
                g.ValueTypes[c] = g.TypeOf(v)! with { ElemType = DataType.Float };
                n.Inputs[i] = c;
            }
            var after = new List<Node>();
            for (int k = 0; k < n.Outputs.Count; k++)
            {
                var o = n.Outputs[k];
                if (o.Length == 0 || g.TypeOf(o)?.ElemType != half) continue;
                var w = b.Unique($"{o}/fallback_fp32");
                g.ValueTypes[w] = g.TypeOf(o)! with { ElemType = DataType.Float };
                n.Outputs[k] = w;
                after.Add(new Node("Cast", [w], [o], b.Unique("fallback/Cast")).Set(NodeAttribute.Of("to", (long)half)));
            }
            nodes.Add(n);
            nodes.AddRange(after);
            byOp[n.OpType] = byOp.GetValueOrDefault(n.OpType) + 1;
        }
        g.Nodes.Clear();
        g.Nodes.AddRange(nodes);
        int wrapped = byOp.Values.Sum();
        if (wrapped > 0)
        {
            // keepApart: a value read in the forward and in the backward gets a cast in each, not one fp32 copy kept in between.
            CastCleanup.Run(g, keepApart: true);
            g.SortTopologically();
        }
        return new Result(wrapped, byOp);
    }
}
